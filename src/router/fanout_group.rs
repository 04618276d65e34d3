//! GROUP BY and DISTINCT across shards, when they include the sharding key. Rows with one
//! key value all live on one shard, so a group (or a distinct row) that contains the key is
//! whole on one shard: each shard's groups are final, aggregates and HAVING included, and
//! no two shards return the same group. The rows then merge like any other (streamed, or
//! k-way under ORDER BY). What the classification records is which columns each clause
//! groups by; the plan checks, against the shard map, that one of them is a key.

use pg_query::protobuf::{self, JoinType};
use pg_query::NodeEnum;

use super::shard::facts::{ColRef, StatementFacts};
use crate::config::Sharding;

/// The column sets that must each include a sharding key (GROUP BY's, DISTINCT's), or
/// `None` when the statement neither groups nor removes duplicates.
pub fn partition(
    parsed: &protobuf::ParseResult,
    s: &protobuf::SelectStmt,
) -> Result<Option<Vec<Vec<ColRef>>>, String> {
    if s.group_clause.is_empty() && s.distinct_clause.is_empty() {
        if s.having_clause.is_some() {
            return Err("HAVING".into());
        }
        return Ok(None);
    }
    let tree = super::walk::tree(parsed);
    for n in super::walk::nodes(&tree) {
        match n.kind {
            "GroupingSet" => return Err("GROUPING SETS, ROLLUP or CUBE".into()),
            "JoinExpr" => {
                let inner = n
                    .int("jointype")
                    .and_then(|j| i32::try_from(j).ok())
                    .is_some_and(|j| JoinType::try_from(j) == Ok(JoinType::JoinInner));
                if !inner {
                    // An outer join's NULL-extended rows group under a NULL key on every shard.
                    return Err("GROUP BY or DISTINCT over an outer join".into());
                }
            }
            _ => {}
        }
    }
    let mut sets = Vec::new();
    if !s.group_clause.is_empty() {
        let items: Vec<protobuf::Node> = s
            .group_clause
            .iter()
            .map(|n| output_item(n, &s.target_list).unwrap_or_else(|| n.clone()))
            .collect();
        sets.push(column_refs(&items));
    }
    if !s.distinct_clause.is_empty() {
        // DISTINCT ON (exprs), or plain DISTINCT (one empty node): the select list.
        let on: Vec<protobuf::Node> = s
            .distinct_clause
            .iter()
            .filter(|n| n.node.is_some())
            .cloned()
            .collect();
        let cols = if on.is_empty() {
            let values: Vec<protobuf::Node> = s
                .target_list
                .iter()
                .filter_map(|t| match t.node.as_ref() {
                    Some(NodeEnum::ResTarget(r)) => r.val.as_deref().cloned(),
                    _ => None,
                })
                .collect();
            column_refs(&values)
        } else {
            column_refs(&on)
        };
        sets.push(cols);
    }
    Ok(Some(sets))
}

/// The select-list expression a GROUP BY item names by position (`GROUP BY 1`). A bare
/// name is left as written: Postgres takes it as an input column before an output alias,
/// and which one exists usher cannot see, so an alias never counts as the key.
fn output_item(n: &protobuf::Node, targets: &[protobuf::Node]) -> Option<protobuf::Node> {
    let target = |i: usize| match targets.get(i).and_then(|t| t.node.as_ref()) {
        Some(NodeEnum::ResTarget(r)) => r.val.as_deref().cloned(),
        _ => None,
    };
    match n.node.as_ref()? {
        NodeEnum::AConst(k) => match &k.val {
            Some(protobuf::a_const::Val::Ival(i)) => {
                target(usize::try_from(i.ival).ok()?.checked_sub(1)?)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The plain column references among `nodes`.
fn column_refs(nodes: &[protobuf::Node]) -> Vec<ColRef> {
    nodes
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(NodeEnum::ColumnRef(c)) => {
                let names: Vec<&str> = c
                    .fields
                    .iter()
                    .filter_map(|f| match &f.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect();
                match names.as_slice() {
                    // A fanned-out read has one level (subqueries are refused).
                    [column] => Some(ColRef {
                        qualifier: None,
                        column: column.to_string(),
                        level: 0,
                        filters: false,
                    }),
                    [.., table, column] => Some(ColRef {
                        qualifier: Some(table.to_string()),
                        column: column.to_string(),
                        level: 0,
                        filters: false,
                    }),
                    [] => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// Checks that each set of `partition` includes the sharding key of a sharded table of `f`.
pub fn keyed(partition: &[Vec<ColRef>], f: &StatementFacts, map: &Sharding) -> Result<(), String> {
    for set in partition {
        let has_key = set.iter().any(|c| {
            f.tables.iter().any(|t| {
                map.table(t.schema.as_deref(), &t.name)
                    .is_some_and(|st| t.owns(c, &st.column))
            })
        });
        if !has_key {
            return Err(
                "GROUP BY or DISTINCT without the sharding key (a group could span shards)".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Result<Option<Vec<Vec<ColRef>>>, String> {
        let (parsed, s) = crate::router::fanout::parse_select(sql);
        partition(&parsed, &s)
    }

    fn col(q: Option<&str>, c: &str) -> ColRef {
        ColRef {
            qualifier: q.map(str::to_string),
            column: c.to_string(),
            level: 0,
            filters: false,
        }
    }

    #[test]
    fn what_each_clause_groups_by() {
        assert_eq!(of("SELECT * FROM t").unwrap(), None);
        assert_eq!(
            of("SELECT c.family_id, count(*) FROM children c GROUP BY c.family_id, 2").unwrap(),
            Some(vec![vec![col(Some("c"), "family_id")]])
        );
        assert_eq!(
            of("SELECT c.family_id AS f, count(*) FROM children c GROUP BY 1").unwrap(),
            Some(vec![vec![col(Some("c"), "family_id")]])
        );
        assert_eq!(
            of("SELECT family_id AS grade, count(*) FROM children GROUP BY grade").unwrap(),
            Some(vec![vec![col(None, "grade")]]),
            "grouped by the input column grade, as Postgres reads it"
        );
        assert_eq!(
            of("SELECT DISTINCT family_id, grade FROM children").unwrap(),
            Some(vec![vec![col(None, "family_id"), col(None, "grade")]])
        );
        assert_eq!(
            of("SELECT DISTINCT ON (grade) grade, id FROM children").unwrap(),
            Some(vec![vec![col(None, "grade")]])
        );
        for (sql, named) in [
            ("SELECT count(*) FROM t HAVING count(*) > 1", "HAVING"),
            ("SELECT a, count(*) FROM t GROUP BY ROLLUP (a)", "ROLLUP"),
            (
                "SELECT c.family_id, count(p.id) FROM children c LEFT JOIN user_progress p ON p.family_id = c.family_id GROUP BY c.family_id",
                "outer join",
            ),
        ] {
            let e = of(sql).unwrap_err();
            assert!(e.contains(named), "{sql}: {e}");
        }
    }
}
