//! The ORDER BY, LIMIT and OFFSET of a read across shards, read off its parse tree: each
//! ORDER BY item as an output column (by position, alias, expression or a column of `*`), the
//! counts as constants or parameters, and the shards' text with the OFFSET folded into the
//! LIMIT (the rows it skips may come from any shard, so usher applies it after the merge).

use pg_query::protobuf::{self, a_const::Val, LimitOption, SetOperation, SortByDir, SortByNulls};
use pg_query::NodeEnum;

use super::fanout::{Count, SortColumn, SortKey};

/// A LIMIT or OFFSET: a constant or a parameter (`LIMIT ALL` / `LIMIT NULL` is none).
pub(super) fn count(n: Option<&protobuf::Node>, what: &str) -> Result<Option<Count>, String> {
    let Some(n) = n else { return Ok(None) };
    match n.node.as_ref() {
        Some(NodeEnum::AConst(k)) if k.isnull => Ok(None),
        Some(NodeEnum::AConst(k)) => match &k.val {
            Some(Val::Ival(i)) => Ok(Some(Count::Value(i64::from(i.ival)))),
            Some(Val::Fval(f)) => f
                .fval
                .parse()
                .map(|v| Some(Count::Value(v)))
                .map_err(|_| format!("{what} {}", f.fval)),
            _ => Err(format!("{what} with a non-integer value")),
        },
        Some(NodeEnum::ParamRef(p)) => u16::try_from(p.number)
            .ok()
            .filter(|n| *n > 0)
            .map(|n| Some(Count::Param(n)))
            .ok_or_else(|| format!("{what} ${}", p.number)),
        _ => Err(format!("{what} with an expression")),
    }
}

/// The ORDER BY item `n` as an output column of `targets`.
pub(super) fn sort_key(n: &protobuf::Node, targets: &[protobuf::Node]) -> Result<SortKey, String> {
    let Some(NodeEnum::SortBy(sort)) = n.node.as_ref() else {
        return Err("ORDER BY".into());
    };
    let descending = match SortByDir::try_from(sort.sortby_dir) {
        Ok(SortByDir::SortbyDesc) => true,
        Ok(SortByDir::SortbyUsing) => return Err("ORDER BY ... USING".into()),
        _ => false,
    };
    let nulls_first = match SortByNulls::try_from(sort.sortby_nulls) {
        Ok(SortByNulls::SortbyNullsFirst) => true,
        Ok(SortByNulls::SortbyNullsLast) => false,
        _ => descending,
    };
    let expr = sort.node.as_deref().and_then(|e| e.node.as_ref());
    let column = match expr {
        Some(NodeEnum::AConst(k)) => match &k.val {
            Some(Val::Ival(i)) if i.ival >= 1 && (i.ival as usize) <= targets.len() => {
                SortColumn::Position(i.ival as usize - 1)
            }
            _ => return Err("ORDER BY a constant".into()),
        },
        Some(NodeEnum::CollateClause(_)) => return Err("ORDER BY ... COLLATE".into()),
        Some(e) => output_column(e, targets)?,
        None => return Err("ORDER BY".into()),
    };
    Ok(SortKey {
        column,
        descending,
        nulls_first,
    })
}

/// The output column an ORDER BY expression names: a select-list alias or output name (as
/// Postgres resolves a bare name first), the same expression as a select-list item, or a
/// column a `*` brings in.
pub(super) fn output_column(
    e: &NodeEnum,
    targets: &[protobuf::Node],
) -> Result<SortColumn, String> {
    let items: Vec<(&str, Option<&NodeEnum>)> = targets
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(r)) => Some((
                r.name.as_str(),
                r.val.as_deref().and_then(|v| v.node.as_ref()),
            )),
            _ => None,
        })
        .collect();
    let names = column_names(e);
    if let Some([bare]) = names.as_deref() {
        // A bare name is an output column name first (alias, or a column's own name).
        let hits: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, (alias, val))| {
                if !alias.is_empty() {
                    return alias == bare;
                }
                val.and_then(column_names)
                    .is_some_and(|n| n.last() == Some(bare))
            })
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [i] => return Ok(SortColumn::Position(*i)),
            [] => {}
            _ => return Err(format!("ORDER BY {bare} (ambiguous)")),
        }
    }
    if let Some(i) = items
        .iter()
        .position(|(_, val)| val.is_some_and(|v| same_expr(v, e)))
    {
        return Ok(SortColumn::Position(i));
    }
    let star = items.iter().any(|(_, val)| {
        matches!(val, Some(NodeEnum::ColumnRef(c)) if c.fields.iter().any(|f| matches!(f.node, Some(NodeEnum::AStar(_)))))
    });
    match names.as_deref() {
        Some([.., last]) if star => Ok(SortColumn::Name(last.clone())),
        _ => Err("ORDER BY an expression that is not in the select list".into()),
    }
}

/// The dotted names of a plain column reference.
pub fn column_names(e: &NodeEnum) -> Option<Vec<String>> {
    let NodeEnum::ColumnRef(c) = e else {
        return None;
    };
    c.fields
        .iter()
        .map(|f| match &f.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// Two expressions written alike (their deparsed text), wherever they stand in the query.
pub fn same_expr(a: &NodeEnum, b: &NodeEnum) -> bool {
    // Deparsed as the one item of a select list: locations play no part.
    let text = |n: &NodeEnum| {
        let target = protobuf::ResTarget {
            val: Some(Box::new(protobuf::Node {
                node: Some(n.clone()),
            })),
            location: -1,
            ..Default::default()
        };
        let select = protobuf::SelectStmt {
            target_list: vec![protobuf::Node {
                node: Some(NodeEnum::ResTarget(Box::new(target))),
            }],
            op: SetOperation::SetopNone as i32,
            limit_option: LimitOption::Default as i32,
            ..Default::default()
        };
        let tree = protobuf::ParseResult {
            version: 0,
            stmts: vec![protobuf::RawStmt {
                stmt: Some(Box::new(protobuf::Node {
                    node: Some(NodeEnum::SelectStmt(Box::new(select))),
                })),
                stmt_location: 0,
                stmt_len: 0,
            }],
        };
        pg_query::deparse(&tree, pg_query::DeparseOptions::default()).ok()
    };
    match (column_names(a), column_names(b)) {
        (Some(x), Some(y)) => x == y,
        _ => text(a).is_some_and(|t| Some(t) == text(b)),
    }
}

/// The statement with its OFFSET removed and added to its LIMIT, deparsed.
pub(super) fn without_offset(
    parsed: &protobuf::ParseResult,
    limit: Option<Count>,
    offset: Count,
) -> Result<String, String> {
    let mut tree = parsed.clone();
    let Some(s) = first_select_mut(&mut tree) else {
        return Err("OFFSET".into());
    };
    let node = |n: NodeEnum| Box::new(protobuf::Node { node: Some(n) });
    let term = |c: Count| match c {
        Count::Value(v) => NodeEnum::AConst(protobuf::AConst {
            isnull: false,
            val: Some(match i32::try_from(v) {
                Ok(ival) => Val::Ival(protobuf::Integer { ival }),
                Err(_) => Val::Fval(protobuf::Float {
                    fval: v.to_string(),
                }),
            }),
            location: -1,
        }),
        // Typed as the LIMIT it stands in: `$1 + $2` alone would leave the types unknown.
        Count::Param(n) => NodeEnum::TypeCast(Box::new(protobuf::TypeCast {
            arg: Some(Box::new(protobuf::Node {
                node: Some(NodeEnum::ParamRef(protobuf::ParamRef {
                    number: i32::from(n),
                    location: -1,
                })),
            })),
            type_name: Some(protobuf::TypeName {
                names: ["pg_catalog", "int8"]
                    .iter()
                    .map(|n| protobuf::Node {
                        node: Some(NodeEnum::String(protobuf::String { sval: (*n).into() })),
                    })
                    .collect(),
                typemod: -1,
                ..Default::default()
            }),
            location: -1,
        })),
    };
    s.limit_offset = None;
    s.limit_count = match (limit, offset) {
        (None, _) => None,
        (Some(Count::Value(l)), Count::Value(o)) => {
            Some(node(term(Count::Value(l.saturating_add(o)))))
        }
        (Some(l), o) => Some(node(NodeEnum::AExpr(Box::new(protobuf::AExpr {
            kind: protobuf::AExprKind::AexprOp as i32,
            name: vec![protobuf::Node {
                node: Some(NodeEnum::String(protobuf::String { sval: "+".into() })),
            }],
            lexpr: Some(node(term(l))),
            rexpr: Some(node(term(o))),
            rexpr_list_start: 0,
            rexpr_list_end: 0,
            location: -1,
        })))),
    };
    pg_query::deparse(&tree, pg_query::DeparseOptions::default())
        .map_err(|e| format!("OFFSET (the shards' query could not be written: {e})"))
}

/// The SELECT that is the first statement of `tree`, to rewrite in place.
pub fn first_select_mut(tree: &mut protobuf::ParseResult) -> Option<&mut protobuf::SelectStmt> {
    match tree
        .stmts
        .first_mut()
        .and_then(|r| r.stmt.as_mut())
        .and_then(|n| n.node.as_mut())
    {
        Some(NodeEnum::SelectStmt(s)) => Some(s),
        _ => None,
    }
}
