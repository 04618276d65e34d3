//! Which aggregate calls combine exactly across shards: the per-shard results of count,
//! sum, min, max, bool_and/every and bool_or combine into the whole's; every other built-in
//! aggregate or window function (listed here by name) gives partial results that do not.

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
    if f.agg_distinct
        || f.agg_within_group
        || !f.agg_order.is_empty()
        || f.agg_filter.is_some()
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
        _ => return None,
    })
}
