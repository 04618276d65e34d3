//! The shape of a read that runs on several shards: how the rows each shard returns combine
//! into the answer one database holding every row would give. Read off the statement's parse
//! tree once, when it is classified: the ORDER BY keys (as output columns), LIMIT and OFFSET,
//! and the text each shard runs (LIMIT raised by the OFFSET, which usher then applies after the
//! merge). What cannot be combined exactly (aggregates, DISTINCT, window functions, set
//! operations, subqueries, ORDER BY on an expression not in the select list) is named, so the
//! statement is refused with that name instead of answered approximately.

use pg_query::protobuf::{self, LimitOption, SetOperation};
use pg_query::NodeEnum;

pub use super::fanout_aggregate::aggregate_of;
use super::fanout_aggregate::{aggregate_list, AGGREGATES};
pub use super::fanout_sort::{column_names, same_expr};
use super::fanout_sort::{count, output_column, sort_key, without_offset};
use super::shard::facts::StatementFacts;
use crate::config::Sharding;

/// How a cross-shard read combines, or why it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// The rows merge exactly.
    Merge(Box<Merge>),
    /// The construct that keeps the rows from merging exactly (named in the refusal).
    Refused(String),
    /// An UPDATE or DELETE that runs exactly on each shard concerned (see
    /// `router::fanout_write`): command tags add up, RETURNING rows stream through.
    Write,
    /// A multi-row INSERT ... VALUES split by row into one INSERT per shard (see
    /// `router::fanout_insert`).
    Insert,
    /// `COPY table TO STDOUT`: every shard's rows, streamed as one COPY (see
    /// `router::fanout_copy`).
    CopyOut(super::fanout_copy::CopyOut),
}

/// An exact merge of the shards' rows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Merge {
    /// ORDER BY keys, in order (empty: rows stream through as they arrive).
    pub order: Vec<SortKey>,
    /// LIMIT, applied to the merged rows.
    pub limit: Option<Count>,
    /// OFFSET, applied to the merged rows.
    pub offset: Option<Count>,
    /// The text each shard runs when it differs from the client's: an OFFSET is removed and
    /// added to the LIMIT, since the rows it skips may come from any shard.
    pub shard_sql: Option<String>,
    /// The select list is only aggregates (no GROUP BY): each shard returns one row of
    /// partial results, combined into the one row the client gets, column by column.
    pub aggregates: Option<Vec<Aggregate>>,
    /// GROUP BY / DISTINCT: the columns of each, one of which must be a sharding key so
    /// that every group is whole on one shard (see `router::fanout_group`).
    pub partition: Option<Vec<Vec<super::shard::facts::ColRef>>>,
    /// GROUP BY whose partial groups combine exactly, for when it does not include the key
    /// (see `router::fanout_regroup`), or why it cannot.
    pub regroup: Option<Result<super::fanout_regroup::Regroup, String>>,
    /// Set on the merge the session carries out when the plan regroups: each output column
    /// a grouping column (`None`) or the aggregate combining it.
    pub grouped: Option<Vec<Option<Aggregate>>>,
    /// With expressions over aggregates (see `router::fanout_finish`): the statement one
    /// shard runs over the combined aggregates (`$1..$n`, `aggregates` in order) to give
    /// the client's row; the shards' own select list is then only the aggregate calls.
    pub finish: Option<String>,
    /// With GROUP BY without the key, HAVING, expressions or ORDER BY: the statement one
    /// shard runs over the combined groups (see `router::fanout_group_finish`).
    pub finish_groups: Option<super::fanout_group_finish::Template>,
    /// The ORDER BY the k-way merge cannot sort by (why), when the groups are finished by
    /// Postgres instead: a plan that does not regroup must refuse it.
    pub unsorted: Option<String>,
}

impl Merge {
    /// The merge reads the result's column types (to compare sort keys or combine
    /// aggregates), so the shards are asked to describe the portal.
    pub fn needs_types(&self) -> bool {
        !self.order.is_empty() || self.aggregates.is_some() || self.grouped.is_some()
    }

    /// How many columns the shards return after the client's (the partial sums and counts
    /// of avg()), stripped from the RowDescription the client gets.
    pub fn hidden(&self) -> usize {
        match (&self.aggregates, &self.grouped) {
            (Some(kinds), _) => hidden_columns(kinds),
            (None, Some(columns)) => hidden_columns(columns.iter().flatten()),
            (None, None) => 0,
        }
    }

    /// The answer comes from a finishing statement run after the shards' (see
    /// [`Merge::finish`], [`Merge::finish_groups`]): the shards' descriptions are not the
    /// client's.
    pub fn finishes(&self) -> bool {
        self.finish.is_some() || self.finish_groups.is_some()
    }

    /// The merge that regroups partial groups, when the shape allows it.
    pub fn regrouped(&self) -> Option<Merge> {
        let Some(Ok(r)) = &self.regroup else {
            return None;
        };
        let finished = r.finish.is_some();
        Some(Merge {
            shard_sql: r.shard_sql.clone(),
            grouped: Some(r.columns.clone()),
            partition: None,
            regroup: None,
            finish_groups: r.finish.clone(),
            // The finishing statement orders and limits the groups itself.
            order: if finished {
                Vec::new()
            } else {
                self.order.clone()
            },
            limit: if finished { None } else { self.limit },
            offset: if finished { None } else { self.offset },
            ..self.clone()
        })
    }
}

/// An aggregate whose per-shard results combine exactly into the whole's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// count(*), count(x): the counts add up.
    Count,
    /// sum(x): the sums add up (exactly: integer and numeric sums only).
    Sum,
    /// min(x).
    Min,
    /// max(x).
    Max,
    /// bool_and(x), every(x).
    And,
    /// bool_or(x).
    Or,
    /// avg(x) of an integer or numeric: the shards also return the sum and count of x (as
    /// hidden columns after the client's, see [`Merge::hidden`]) and the whole's average is
    /// their combined sum divided by their combined count, as numeric divides.
    Avg,
}

/// Hidden columns each shard returns after the client's for `kinds`: a sum and a count per
/// avg(), in the order of the avg() calls.
pub fn hidden_columns<'a>(kinds: impl IntoIterator<Item = &'a Aggregate>) -> usize {
    2 * kinds.into_iter().filter(|k| **k == Aggregate::Avg).count()
}

/// One ORDER BY key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// Which output column it sorts by.
    pub column: SortColumn,
    /// DESC.
    pub descending: bool,
    /// NULLs sort before other values (NULLS FIRST, or DESC without NULLS LAST).
    pub nulls_first: bool,
}

/// An ORDER BY key as an output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortColumn {
    /// By position (0-based): `ORDER BY 2`, or an expression or alias of the select list.
    Position(usize),
    /// By the name of a column a `*` expands to, found in the RowDescription.
    Name(String),
}

/// A LIMIT or OFFSET count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A constant.
    Value(i64),
    /// Bind parameter `$n` (1-based).
    Param(u16),
}

/// Checks that each shard can answer for its own rows: every table is sharded or global (an
/// unlisted table lives on the default shard only), and sharded tables are joined on their
/// keys, so that rows which meet in the answer live on the same shard. Returns what breaks
/// that, named.
pub fn colocated(f: &StatementFacts, map: &Sharding) -> Result<(), String> {
    let mut sharded: Vec<(usize, &str)> = Vec::new();
    for (i, t) in f.tables.iter().enumerate() {
        if let Some(st) = map.table(t.schema.as_deref(), &t.name) {
            sharded.push((i, st.column.as_str()));
        } else if !map.is_global(t.schema.as_deref(), &t.name) {
            return Err(format!(
                "table {:?} (neither sharded nor global: it lives on the default shard only)",
                t.name
            ));
        }
    }
    // Union-find over the sharded references, joined by equalities of their key columns.
    let mut group: Vec<usize> = (0..sharded.len()).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            i = group[i];
        }
        i
    }
    for (a, b) in &f.joins {
        let side = |c: &super::shard::facts::ColRef| {
            let owners: Vec<usize> = sharded
                .iter()
                .enumerate()
                .filter(|(_, (t, column))| f.tables[*t].owns(c, column))
                .map(|(k, _)| k)
                .collect();
            match owners.as_slice() {
                [k] => Some(*k),
                _ => None,
            }
        };
        if let (Some(x), Some(y)) = (side(a), side(b)) {
            let (rx, ry) = (root(&mut group, x), root(&mut group, y));
            group[rx] = ry;
        }
    }
    let roots: std::collections::BTreeSet<usize> =
        (0..sharded.len()).map(|k| root(&mut group, k)).collect();
    if roots.len() > 1 {
        return Err("a join of sharded tables that is not on their sharding keys".into());
    }
    Ok(())
}

/// The shape of the single SELECT `stmt`, parsed from `parsed` (for the rewrite).
pub fn shape(parsed: &protobuf::ParseResult, stmt: &protobuf::SelectStmt) -> Shape {
    match merge_of(parsed, stmt) {
        Ok(m) => Shape::Merge(Box::new(m)),
        Err(construct) => Shape::Refused(construct),
    }
}

fn merge_of(parsed: &protobuf::ParseResult, s: &protobuf::SelectStmt) -> Result<Merge, String> {
    if SetOperation::try_from(s.op) != Ok(SetOperation::SetopNone) {
        return Err("UNION, INTERSECT or EXCEPT".into());
    }
    let partition = super::fanout_group::partition(parsed, s)?;
    let grouped = !s.group_clause.is_empty();
    if !s.window_clause.is_empty() {
        return Err("window functions".into());
    }
    if s.with_clause.is_some() {
        return Err("WITH (common table expressions)".into());
    }
    if LimitOption::try_from(s.limit_option) == Ok(LimitOption::WithTies) {
        return Err("FETCH ... WITH TIES".into());
    }
    // Grouped by the key (checked by the plan), each shard's groups are final.
    let aggregates = if grouped {
        None
    } else {
        aggregate_list(&s.target_list)
    };
    // Expressions over aggregates: the shards compute the aggregates, one shard the rest.
    // Or, when every aggregate ignores duplicates (count(DISTINCT x), ...), Postgres finishes
    // them over the distinct rows.
    let mut distinct = None;
    let mut distinct_calls = Vec::new();
    let finish = match aggregates {
        None if !grouped && calls_aggregates(parsed) => {
            match super::fanout_finish::finish_of(parsed, s) {
                Ok(f) => Some(f),
                Err(why) => {
                    match super::fanout_distinct::finish_distinct(parsed, s, &mut distinct_calls) {
                        Ok(g) => {
                            distinct = Some(g);
                            None
                        }
                        Err(_) => return Err(why),
                    }
                }
            }
        }
        _ => None,
    };
    let aggregates = match &finish {
        Some(f) => Some(f.aggregates.clone()),
        None => aggregates,
    };
    // The top-level aggregate calls of such a list, by position in the text.
    let mut combined: Vec<i32> = match &aggregates {
        Some(_) if finish.is_some() => finish.iter().flat_map(|f| f.locations.clone()).collect(),
        Some(_) => s
            .target_list
            .iter()
            .filter_map(|t| match t.node.as_ref() {
                Some(NodeEnum::ResTarget(r)) => {
                    match r.val.as_deref().and_then(|v| v.node.as_ref()) {
                        Some(NodeEnum::FuncCall(f)) => Some(f.location),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    // Grouped without the key, the groups may still combine; any other aggregate stops that.
    // The shards' statement carries avg()'s partial sums and counts as hidden columns.
    let base = finish.as_ref().map_or(parsed, |f| &f.shard_tree);
    let augmented = super::fanout_aggregate::with_avg_partials(base);
    let shard_tree = augmented.as_ref().unwrap_or(base);
    combined.extend(distinct_calls);
    let distinct = match distinct {
        Some(g) => Some(
            pg_query::deparse(&g.shard_tree, pg_query::DeparseOptions::default())
                .map(|sql| super::fanout_regroup::Regroup {
                    columns: g.columns,
                    shard_sql: Some(sql),
                    finish: Some(g.template),
                })
                .map_err(|e| {
                    format!("DISTINCT aggregates (the shards' query could not be written: {e})")
                }),
        ),
        None => None,
    };
    // A plain SELECT DISTINCT without aggregates is a grouping by its whole select list.
    let as_grouped = (!grouped && aggregates.is_none() && finish.is_none())
        .then(|| distinct_as_grouping(s))
        .flatten();
    let mut regroup = distinct.or_else(|| {
        let g = as_grouped.as_ref().unwrap_or(s);
        (grouped || as_grouped.is_some()).then(|| {
            // HAVING, expressions and ORDER BY are finished by Postgres over the combined
            // groups.
            let plain = g.having_clause.is_none() && g.sort_clause.is_empty();
            match super::fanout_regroup::regroup(shard_tree, augmented.is_some(), g, &mut combined)
            {
                Ok(r) if plain => Ok(r),
                _ => super::fanout_regroup::finished(parsed, g, &mut combined),
            }
        })
    });
    if let Some(Ok(r)) = &regroup {
        // `ORDER BY count(*)` sorts by an output column the regrouping combines.
        for n in &s.sort_clause {
            if let Some(NodeEnum::SortBy(sort)) = n.node.as_ref() {
                if let Some(e @ NodeEnum::FuncCall(f)) =
                    sort.node.as_deref().and_then(|e| e.node.as_ref())
                {
                    if let Ok(SortColumn::Position(i)) = output_column(e, &s.target_list) {
                        if matches!(r.columns.get(i), Some(Some(_))) {
                            combined.push(f.location);
                        }
                    }
                }
            }
        }
    }
    let tree = super::walk::tree(parsed);
    for n in super::walk::nodes(&tree) {
        match n.kind {
            "FuncCall"
                if n.int("location")
                    .is_some_and(|l| combined.iter().any(|c| i64::from(*c) == l)) => {}
            "SubLink" | "RangeSubselect" => return Err("subqueries".into()),
            "FuncCall" => {
                let name = n
                    .func_name()
                    .last()
                    .copied()
                    .unwrap_or_default()
                    .to_string();
                if n.has("over") {
                    return Err(format!("window function {name}()"));
                }
                if grouped {
                    if matches!(regroup, Some(Ok(_)))
                        && AGGREGATES.contains(&name.to_ascii_lowercase().as_str())
                    {
                        regroup =
                            Some(Err(format!("aggregate function {name}() in an expression")));
                    }
                    continue;
                }
                if n.flag("agg_star")
                    || n.flag("agg_distinct")
                    || n.flag("agg_within_group")
                    || n.has("agg_order")
                    || n.has("agg_filter")
                    || AGGREGATES.contains(&name.to_ascii_lowercase().as_str())
                {
                    return Err(format!("aggregate function {name}()"));
                }
            }
            "GroupingFunc" => return Err("GROUPING".into()),
            _ => {}
        }
    }
    // One combined row: its order does not matter; finished groups are ordered by Postgres.
    let finishes = matches!(&regroup, Some(Ok(r)) if r.finish.is_some());
    let sorted = match aggregates {
        Some(_) => Ok(Vec::new()),
        None => s
            .sort_clause
            .iter()
            .map(|n| sort_key(n, &s.target_list))
            .collect::<Result<Vec<_>, _>>(),
    };
    // An ORDER BY the merge cannot sort by may still be finished by Postgres.
    let (order, unsorted) = match sorted {
        Ok(order) => (order, None),
        Err(why) if finishes => (Vec::new(), Some(why)),
        Err(why) => return Err(why),
    };
    let limit = count(s.limit_count.as_deref(), "LIMIT")?;
    let offset = count(s.limit_offset.as_deref(), "OFFSET")?;
    if let Some(Ok(_)) = &regroup {
        if let Err(e) = super::fanout_regroup::check_window(limit, offset) {
            regroup = Some(Err(e));
        }
    }
    let negative = |c: Option<Count>| matches!(c, Some(Count::Value(v)) if v < 0);
    if let Some(f) = &finish {
        // The shards' statement drops LIMIT and OFFSET: a parameter there would be left
        // without a type, a negative count without its error.
        if let Err(e) = super::fanout_regroup::check_window(limit, offset) {
            return Err(format!("{e}, with an expression over aggregates"));
        }
        let sql = pg_query::deparse(shard_tree, pg_query::DeparseOptions::default())
            .map_err(|e| format!("an expression over aggregates (not written back: {e})"))?;
        return Ok(Merge {
            order,
            limit,
            offset,
            shard_sql: Some(sql),
            aggregates,
            partition,
            regroup,
            grouped: None,
            finish: Some(f.sql.clone()),
            finish_groups: None,
            unsorted: None,
        });
    }
    let shard_sql = match offset {
        // A negative count is the shards' error to raise, as Postgres raises it.
        _ if negative(limit) || negative(offset) => None,
        None if aggregates.is_some() && augmented.is_some() => Some(
            pg_query::deparse(shard_tree, pg_query::DeparseOptions::default())
                .map_err(|e| format!("avg() (the shards' query could not be written: {e})"))?,
        ),
        None => None,
        Some(o) => Some(without_offset(shard_tree, limit, o)?),
    };
    Ok(Merge {
        order,
        limit,
        offset,
        shard_sql,
        aggregates,
        partition,
        regroup,
        grouped: None,
        finish: None,
        finish_groups: None,
        unsorted,
    })
}

/// `SELECT DISTINCT list ...` (not DISTINCT ON) as `SELECT list ... GROUP BY 1, ..., n`:
/// the same rows, which the regrouping can combine across shards.
fn distinct_as_grouping(s: &protobuf::SelectStmt) -> Option<protobuf::SelectStmt> {
    if !matches!(s.distinct_clause.as_slice(), [d] if d.node.is_none()) {
        return None;
    }
    // `*` would have to be expanded to be grouped by.
    let star = s.target_list.iter().any(|t| match t.node.as_ref() {
        Some(NodeEnum::ResTarget(r)) => matches!(
            r.val.as_deref().and_then(|v| v.node.as_ref()),
            Some(NodeEnum::ColumnRef(c)) if c.fields.iter().any(|f| matches!(f.node, Some(NodeEnum::AStar(_))))
        ),
        _ => false,
    });
    if star {
        return None;
    }
    let mut g = s.clone();
    g.distinct_clause.clear();
    g.group_clause = (1..=s.target_list.len())
        .map(|i| protobuf::Node {
            node: Some(NodeEnum::AConst(protobuf::AConst {
                isnull: false,
                val: Some(pg_query::protobuf::a_const::Val::Ival(protobuf::Integer {
                    ival: i32::try_from(i).unwrap_or(i32::MAX),
                })),
                location: -1,
            })),
        })
        .collect();
    Some(g)
}

/// Whether the statement, which has no subquery, calls a built-in aggregate (outside a
/// window). A statement with subqueries is refused for them.
fn calls_aggregates(parsed: &protobuf::ParseResult) -> bool {
    let tree = super::walk::tree(parsed);
    let nodes = super::walk::nodes(&tree);
    if nodes
        .iter()
        .any(|n| matches!(n.kind, "SubLink" | "RangeSubselect"))
    {
        return false;
    }
    nodes.iter().any(|n| {
        n.kind == "FuncCall"
            && !n.has("over")
            && n.func_name()
                .last()
                .is_some_and(|name| AGGREGATES.contains(&name.to_ascii_lowercase().as_str()))
    })
}

/// For tests: `sql` parsed, with its one statement, which must be a SELECT.
#[cfg(test)]
pub fn parse_select(sql: &str) -> (protobuf::ParseResult, protobuf::SelectStmt) {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::default()).unwrap();
    let Some(NodeEnum::SelectStmt(s)) = parsed.protobuf.stmts[0]
        .stmt
        .as_ref()
        .and_then(|n| n.node.as_ref())
    else {
        panic!("not a select: {sql}");
    };
    let s = (**s).clone();
    (parsed.protobuf, s)
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;
