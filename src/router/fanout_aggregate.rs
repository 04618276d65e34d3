//! Which aggregate calls combine exactly across shards: the per-shard results of count,
//! sum, min, max, bool_and/every and bool_or combine into the whole's, and avg() combines
//! from a partial sum and count each shard returns beside it (the shards' statement gets
//! them as hidden columns, written here); every other built-in aggregate or window function
//! (listed here by name) gives partial results that do not.

use pg_query::protobuf;
use pg_query::NodeEnum;

use super::fanout::Aggregate;

/// Built-in aggregate and window functions: per-shard results of these are partial.
pub const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_objectagg",
    "json_arrayagg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "range_agg",
    "range_intersect_agg",
    "any_value",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
];

/// The aggregates of a select list made only of plain calls of combinable aggregates.
pub fn aggregate_list(targets: &[protobuf::Node]) -> Option<Vec<Aggregate>> {
    targets
        .iter()
        .map(|t| {
            let Some(NodeEnum::ResTarget(r)) = t.node.as_ref() else {
                return None;
            };
            let Some(NodeEnum::FuncCall(f)) = r.val.as_deref().and_then(|v| v.node.as_ref()) else {
                return None;
            };
            aggregate_of(f)
        })
        .collect()
}

/// The aggregate a plain call `f` is, when its per-shard results combine exactly.
pub fn aggregate_of(f: &protobuf::FuncCall) -> Option<Aggregate> {
    // FILTER (WHERE ...) picks rows on each shard as on one database: it combines alike.
    if f.agg_distinct
        || f.agg_within_group
        || !f.agg_order.is_empty()
        || f.over.is_some()
        || f.func_variadic
    {
        return None;
    }
    let names: Vec<&str> = f
        .funcname
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    let name = match names.as_slice() {
        [name] | ["pg_catalog", name] => name.to_ascii_lowercase(),
        _ => return None,
    };
    let one_arg = f.args.len() == 1 && !f.agg_star;
    Some(match name.as_str() {
        "count" if f.agg_star || one_arg => Aggregate::Count,
        "sum" if one_arg => Aggregate::Sum,
        "min" if one_arg => Aggregate::Min,
        "max" if one_arg => Aggregate::Max,
        "bool_and" | "every" if one_arg => Aggregate::And,
        "bool_or" if one_arg => Aggregate::Or,
        "avg" if one_arg => Aggregate::Avg,
        _ => return None,
    })
}

/// The statement with, for every avg(x) of its select list (a plain call that combines), a
/// `pg_catalog.sum(x)` and a `pg_catalog.count(x)` appended to the select list, in order:
/// the partials the whole's average is computed from. Named so that no ORDER BY or column
/// reference of the client's can resolve to them. `None` when there is no such avg().
pub fn with_avg_partials(parsed: &protobuf::ParseResult) -> Option<protobuf::ParseResult> {
    let select = |t: &protobuf::ParseResult| match t
        .stmts
        .first()
        .and_then(|r| r.stmt.as_ref())
        .and_then(|n| n.node.as_ref())
    {
        Some(NodeEnum::SelectStmt(s)) => Some(s.target_list.clone()),
        _ => None,
    };
    let mut extra = Vec::new();
    for t in select(parsed)? {
        let Some(NodeEnum::ResTarget(r)) = t.node.as_ref() else {
            continue;
        };
        let Some(NodeEnum::FuncCall(f)) = r.val.as_deref().and_then(|v| v.node.as_ref()) else {
            continue;
        };
        if aggregate_of(f) != Some(Aggregate::Avg) {
            continue;
        }
        let n = extra.len() / 2 + 1;
        for (func, what) in [("sum", "sum"), ("count", "count")] {
            extra.push(hidden_call(func, f, &format!("usher avg {n} {what}")));
        }
    }
    if extra.is_empty() {
        return None;
    }
    let mut tree = parsed.clone();
    if let Some(s) = super::fanout_sort::first_select_mut(&mut tree) {
        s.target_list.extend(extra);
    }
    Some(tree)
}

/// `pg_catalog.<func>(args of avg) FILTER (as avg's) AS "<name>"`, as a select-list item.
fn hidden_call(func: &str, avg: &protobuf::FuncCall, name: &str) -> protobuf::Node {
    let string = |s: &str| protobuf::Node {
        node: Some(NodeEnum::String(protobuf::String { sval: s.into() })),
    };
    let call = protobuf::FuncCall {
        funcname: vec![string("pg_catalog"), string(func)],
        args: avg.args.clone(),
        agg_filter: avg.agg_filter.clone(),
        funcformat: protobuf::CoercionForm::CoerceExplicitCall as i32,
        location: -1,
        ..Default::default()
    };
    protobuf::Node {
        node: Some(NodeEnum::ResTarget(Box::new(protobuf::ResTarget {
            name: name.into(),
            val: Some(Box::new(protobuf::Node {
                node: Some(NodeEnum::FuncCall(Box::new(call))),
            })),
            location: -1,
            ..Default::default()
        }))),
    }
}
