//! Every node of a parse tree, wherever it sits. `pg_query`'s own `nodes()` iterator visits
//! the places table and function lookups need, and skips others (VALUES rows, RETURNING
//! lists, ON CONFLICT, array subscripts, ...): fine for finding a table, wrong for a check
//! that must see every subquery, aggregate or clock call before usher runs a statement on
//! several shards. This walk goes through the tree's serialized form, so no field can be
//! missed; it runs once per statement shape (the classification is cached) or per statement
//! that spans shards.

use pg_query::protobuf::ParseResult;
use serde_json::Value;

/// One node: its kind (the `NodeEnum` variant's name, e.g. `FuncCall`) and its fields.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The variant name.
    pub kind: &'a str,
    /// Its fields, as serialized.
    pub body: &'a Value,
}

impl Node<'_> {
    /// An integer field.
    pub fn int(&self, field: &str) -> Option<i64> {
        self.body.get(field).and_then(Value::as_i64)
    }

    /// A boolean field (false when absent).
    pub fn flag(&self, field: &str) -> bool {
        self.body
            .get(field)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether a field holds something (a node, or a non-empty list).
    pub fn has(&self, field: &str) -> bool {
        match self.body.get(field) {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        }
    }

    /// The dotted name of a FuncCall (`["pg_catalog", "now"]`).
    pub fn func_name(&self) -> Vec<&str> {
        self.body
            .get("funcname")
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|p| p.pointer("/node/String/sval").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The number of arguments of a FuncCall.
    pub fn arg_count(&self) -> usize {
        self.body
            .get("args")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }
}

/// The serialized tree, to walk with [`each`].
pub fn tree(parsed: &ParseResult) -> Value {
    serde_json::to_value(parsed).unwrap_or(Value::Null)
}

/// Calls `f` with every node of `tree`, parents before children (siblings in no
/// particular order).
pub fn each<'a>(tree: &'a Value, f: &mut impl FnMut(Node<'a>)) {
    match tree {
        Value::Object(map) => {
            if let Some(Value::Object(inner)) = map.get("node") {
                if let (1, Some((kind, body))) = (inner.len(), inner.iter().next()) {
                    f(Node { kind, body });
                }
            }
            for v in map.values() {
                each(v, f);
            }
        }
        Value::Array(items) => {
            for v in items {
                each(v, f);
            }
        }
        _ => {}
    }
}

/// Every node of `tree`, in walk order (see [`each`]).
pub fn nodes(tree: &Value) -> Vec<Node<'_>> {
    let mut out = Vec::new();
    each(tree, &mut |n| out.push(n));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_what_pg_query_nodes_skips() {
        let sql = "INSERT INTO t (a) VALUES ((x[1]), now()) ON CONFLICT (a) DO UPDATE SET b = (SELECT 1) RETURNING nextval('s'), CURRENT_DATE, $3";
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::default()).unwrap();
        let t = tree(&parsed.protobuf);
        let all = nodes(&t);
        let mut funcs: Vec<Vec<&str>> = all
            .iter()
            .filter(|n| n.kind == "FuncCall")
            .map(|n| n.func_name())
            .collect();
        funcs.sort();
        assert_eq!(funcs, vec![vec!["nextval"], vec!["now"]]);
        assert!(all.iter().any(|n| n.kind == "SubLink"));
        assert!(all
            .iter()
            .any(|n| n.kind == "SqlvalueFunction" && n.int("op") == Some(1)));
        assert!(all
            .iter()
            .any(|n| n.kind == "ParamRef" && n.int("number") == Some(3)));
        assert!(all.iter().any(|n| n.kind == "AIndirection"));
    }
}
