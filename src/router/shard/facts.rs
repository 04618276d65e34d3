//! What a statement says about sharding keys, read off the Postgres parse tree once per query
//! shape and cached with its classification: the tables it names (and which it writes), the
//! `column = value` conditions it filters by, the column equalities that join tables, and the
//! rows it inserts. Values are recorded by *where* they come from (the n-th literal of the text
//! or bind parameter `$n`), never by what they are, so one cached result serves every query
//! that differs only in its constants; the values are read per execution.

use std::ops::Range;

use pg_query::protobuf::{AExprKind, BoolExprType};
use pg_query::{NodeEnum, NodeRef};

use super::levels::Levels;

/// Where a key value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSrc {
    /// The `index`-th literal of the query text (see `normalize::literal_spans`), negated when
    /// written `-42`.
    Literal {
        /// Position among the text's literals.
        index: u32,
        /// A unary minus precedes it.
        negate: bool,
    },
    /// Bind parameter `$n` (1-based).
    Param {
        /// Its number.
        n: u16,
        /// The type OID of a cast written on the parameter itself (`$1::text`), which is the
        /// type the server infers for it when the Parse leaves it unspecified: 0 without a cast,
        /// [`keys::oid::OTHER`](super::keys::oid::OTHER) for a type usher does not decode.
        cast: u32,
    },
}

/// A column reference: `qualifier.column` (qualifier = table name or alias) or `column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColRef {
    /// Table name or alias written before the column, if any.
    pub qualifier: Option<String>,
    /// Column name.
    pub column: String,
    /// The query level it is written at (see [`levels`](super::levels)).
    pub level: u32,
    /// A condition on it there filters the level's rows (WHERE, or an inner join's ON).
    pub filters: bool,
}

/// A table named by a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// Schema, when qualified.
    pub schema: Option<String>,
    /// Table name.
    pub name: String,
    /// Alias, when given.
    pub alias: Option<String>,
    /// The statement inserts, updates, deletes, merges or copies into it.
    pub written: bool,
    /// The query level whose FROM (or DML target) names it.
    pub level: u32,
}

impl TableRef {
    /// True when `col` may refer to this table's column `column`.
    pub fn owns(&self, col: &ColRef, column: &str) -> bool {
        col.column == column
            && match &col.qualifier {
                None => true,
                Some(q) => match &self.alias {
                    Some(a) => a == q,
                    None => *q == self.name,
                },
            }
    }
}

/// One inserted row's value for a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowValue {
    /// A literal or parameter.
    Value(ValueSrc),
    /// A column of a selected table (`INSERT ... SELECT f.id FROM families f ...`).
    Column(ColRef),
    /// Any other expression.
    Other,
}

/// An INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertFacts {
    /// Index of the target in [`StatementFacts::tables`].
    pub table: usize,
    /// The column list, if written.
    pub columns: Option<Vec<String>>,
    /// Rows (`None` when they come from something usher does not read, e.g. a UNION).
    pub rows: Option<Vec<Vec<RowValue>>>,
}

/// Sharding facts of one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementFacts {
    /// Schema changes and maintenance (CREATE, ALTER, DROP, TRUNCATE, VACUUM, ...): they run
    /// on every shard's primary.
    pub broadcast: bool,
    /// Tables named (catalog tables and CTE names excluded).
    pub tables: Vec<TableRef>,
    /// `column = value` and `column IN (values)` conditions combined with AND.
    pub conds: Vec<(ColRef, Vec<ValueSrc>)>,
    /// `a.col = b.col` conditions (joins) and `USING (col)`.
    pub joins: Vec<(ColRef, ColRef)>,
    /// INSERTs.
    pub inserts: Vec<InsertFacts>,
    /// `UPDATE ... SET column = value` (value `None` for an expression), with the target.
    pub sets: Vec<(usize, String, Option<ValueSrc>)>,
    /// COPY ... FROM into a table (index in `tables`).
    pub copy_in: Option<usize>,
    /// Parent of each query level (level 0 is the statement).
    pub parents: Vec<u32>,
    /// The names FROM items give at each level, for resolving qualified columns.
    pub names: Vec<(u32, String)>,
}

impl StatementFacts {
    /// True when level `outer` is `inner` or encloses it.
    pub fn encloses(&self, outer: u32, inner: u32) -> bool {
        let mut at = inner;
        for _ in 0..=self.parents.len() {
            if at == outer {
                return true;
            }
            match self.parents.get(at as usize) {
                Some(p) if *p != at => at = *p,
                _ => return false,
            }
        }
        false
    }

    /// True when `col` refers to a column of table `i`: an unqualified column to a table of
    /// its own level (never an outer one, to stay on the safe side), a qualified one to the
    /// table of that name at the nearest level naming it, counting outward.
    pub fn resolves(&self, col: &ColRef, i: usize) -> bool {
        let Some(t) = self.tables.get(i) else {
            return false;
        };
        let Some(q) = &col.qualifier else {
            return t.level == col.level;
        };
        let mut at = col.level;
        for _ in 0..=self.parents.len() {
            if self.names.iter().any(|(l, n)| *l == at && n == q) {
                return t.level == at;
            }
            match self.parents.get(at as usize) {
                Some(p) if *p != at => at = *p,
                _ => return false,
            }
        }
        false
    }
}

/// The facts of one statement of the text `sql`, whose literal ranges are `spans`.
pub fn statement_facts(stmt: &NodeEnum, sql: &[u8], spans: &[Range<usize>]) -> StatementFacts {
    let mut f = StatementFacts {
        broadcast: is_broadcast(stmt),
        ..StatementFacts::default()
    };
    if f.broadcast {
        return f;
    }
    let tree = serde_json::to_value(stmt).unwrap_or_default();
    let levels = Levels::of(&tree);
    f.parents = levels.parents.clone();
    f.names = levels.names.clone();
    let nodes = stmt.nodes();
    let ctes: Vec<&str> = nodes
        .iter()
        .filter_map(|(n, ..)| match n {
            NodeRef::CommonTableExpr(c) => Some(c.ctename.as_str()),
            _ => None,
        })
        .collect();
    let mut written: Vec<i32> = Vec::new();
    for (n, ..) in &nodes {
        match n {
            NodeRef::InsertStmt(s) => written.extend(s.relation.as_ref().map(|r| r.location)),
            NodeRef::UpdateStmt(s) => written.extend(s.relation.as_ref().map(|r| r.location)),
            NodeRef::DeleteStmt(s) => written.extend(s.relation.as_ref().map(|r| r.location)),
            NodeRef::MergeStmt(s) => written.extend(s.relation.as_ref().map(|r| r.location)),
            NodeRef::CopyStmt(s) if s.is_from => {
                written.extend(s.relation.as_ref().map(|r| r.location))
            }
            _ => {}
        }
    }
    let mut locations = Vec::new();
    for (n, ..) in &nodes {
        if let NodeRef::RangeVar(r) = n {
            let schema = (!r.schemaname.is_empty()).then(|| r.schemaname.clone());
            let catalog = match &schema {
                Some(s) => s == "pg_catalog" || s == "information_schema",
                None => r.relname.starts_with("pg_") || ctes.contains(&r.relname.as_str()),
            };
            if catalog || locations.contains(&r.location) {
                continue;
            }
            locations.push(r.location);
            f.tables.push(TableRef {
                schema,
                name: r.relname.clone(),
                alias: r.alias.as_ref().map(|a| a.aliasname.clone()),
                written: written.contains(&r.location),
                level: levels.relation(r.location),
            });
        }
    }
    // pg_query's iterator skips subqueries in some places (VALUES rows, RETURNING lists,
    // ON CONFLICT, array subscripts): tables only named there are added from the full walk,
    // with no condition known, so placement treats their keys as missing rather than routing
    // by the rest of the statement.
    let walked = super::super::walk::nodes(&tree);
    let all_ctes: Vec<&str> = walked
        .iter()
        .filter(|n| n.kind == "CommonTableExpr")
        .filter_map(|n| n.body.get("ctename").and_then(|v| v.as_str()))
        .collect();
    for n in walked.iter().filter(|n| n.kind == "RangeVar") {
        let (Some(name), Some(location)) = (
            n.body.get("relname").and_then(|v| v.as_str()),
            n.int("location"),
        ) else {
            continue;
        };
        let location = location as i32;
        let schema = n
            .body
            .get("schemaname")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty());
        let catalog = match schema {
            Some(s) => s == "pg_catalog" || s == "information_schema",
            None => name.starts_with("pg_") || all_ctes.contains(&name),
        };
        if catalog || locations.contains(&location) {
            continue;
        }
        locations.push(location);
        f.tables.push(TableRef {
            schema: schema.map(str::to_string),
            name: name.to_string(),
            alias: n
                .body
                .pointer("/alias/aliasname")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            written: false,
            level: levels.relation(location),
        });
    }
    let table_at = |rel: &Option<pg_query::protobuf::RangeVar>| -> Option<usize> {
        let loc = rel.as_ref()?.location;
        locations.iter().position(|l| *l == loc)
    };
    let value = |n: &pg_query::protobuf::Node| value_src(n, sql, spans);
    let column = |n: &pg_query::protobuf::Node| column_ref(n, &levels);
    for (n, ..) in &nodes {
        match n {
            NodeRef::SelectStmt(s) => conjuncts(s.where_clause.as_deref(), &mut f, &value, &column),
            NodeRef::DeleteStmt(s) => conjuncts(s.where_clause.as_deref(), &mut f, &value, &column),
            NodeRef::UpdateStmt(s) => {
                conjuncts(s.where_clause.as_deref(), &mut f, &value, &column);
                if let Some(t) = table_at(&s.relation) {
                    for target in &s.target_list {
                        if let Some(NodeEnum::ResTarget(rt)) = &target.node {
                            let v = rt.val.as_deref().and_then(value);
                            f.sets.push((t, rt.name.clone(), v));
                        }
                    }
                }
            }
            NodeRef::MergeStmt(s) => {
                conjuncts(s.join_condition.as_deref(), &mut f, &value, &column)
            }
            NodeRef::JoinExpr(j) => {
                conjuncts(j.quals.as_deref(), &mut f, &value, &column);
                let level = join_level(j, &levels);
                for u in &j.using_clause {
                    if let Some(NodeEnum::String(s)) = &u.node {
                        let c = ColRef {
                            qualifier: None,
                            column: s.sval.clone(),
                            level,
                            filters: false,
                        };
                        f.joins.push((c.clone(), c));
                    }
                }
            }
            NodeRef::InsertStmt(s) => {
                let Some(table) = table_at(&s.relation) else {
                    continue;
                };
                let columns: Vec<String> = s
                    .cols
                    .iter()
                    .filter_map(|c| match &c.node {
                        Some(NodeEnum::ResTarget(rt)) => Some(rt.name.clone()),
                        _ => None,
                    })
                    .collect();
                let row = |items: &[pg_query::protobuf::Node]| -> Vec<RowValue> {
                    items
                        .iter()
                        .map(|i| {
                            let i = match &i.node {
                                Some(NodeEnum::ResTarget(rt)) => match rt.val.as_deref() {
                                    Some(v) => v,
                                    None => return RowValue::Other,
                                },
                                _ => i,
                            };
                            match (value(i), column(i)) {
                                (Some(v), _) => RowValue::Value(v),
                                (None, Some(c)) => RowValue::Column(c),
                                _ => RowValue::Other,
                            }
                        })
                        .collect()
                };
                let rows = match s.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
                    Some(NodeEnum::SelectStmt(sel)) if !sel.values_lists.is_empty() => Some(
                        sel.values_lists
                            .iter()
                            .map(|l| match &l.node {
                                Some(NodeEnum::List(l)) => row(&l.items),
                                _ => Vec::new(),
                            })
                            .collect(),
                    ),
                    Some(NodeEnum::SelectStmt(sel)) if sel.larg.is_none() => {
                        Some(vec![row(&sel.target_list)])
                    }
                    // DEFAULT VALUES: no key given.
                    None => Some(vec![Vec::new()]),
                    _ => None,
                };
                f.inserts.push(InsertFacts {
                    table,
                    columns: (!columns.is_empty()).then_some(columns),
                    rows,
                });
                if let Some(oc) = &s.on_conflict_clause {
                    for target in &oc.target_list {
                        if let Some(NodeEnum::ResTarget(rt)) = &target.node {
                            let v = rt.val.as_deref().and_then(value);
                            f.sets.push((table, rt.name.clone(), v));
                        }
                    }
                }
            }
            NodeRef::CopyStmt(s) if s.is_from => f.copy_in = table_at(&s.relation),
            _ => {}
        }
    }
    f
}

/// Schema changes and maintenance that every shard needs.
fn is_broadcast(stmt: &NodeEnum) -> bool {
    matches!(
        stmt,
        NodeEnum::CreateStmt(_)
            | NodeEnum::AlterTableStmt(_)
            | NodeEnum::DropStmt(_)
            | NodeEnum::IndexStmt(_)
            | NodeEnum::CreateSeqStmt(_)
            | NodeEnum::AlterSeqStmt(_)
            | NodeEnum::ViewStmt(_)
            | NodeEnum::CreateFunctionStmt(_)
            | NodeEnum::AlterFunctionStmt(_)
            | NodeEnum::CommentStmt(_)
            | NodeEnum::RenameStmt(_)
            | NodeEnum::CreateSchemaStmt(_)
            | NodeEnum::CreateEnumStmt(_)
            | NodeEnum::AlterEnumStmt(_)
            | NodeEnum::CompositeTypeStmt(_)
            | NodeEnum::CreateDomainStmt(_)
            | NodeEnum::CreateRangeStmt(_)
            | NodeEnum::DefineStmt(_)
            | NodeEnum::CreateExtensionStmt(_)
            | NodeEnum::AlterExtensionStmt(_)
            | NodeEnum::GrantStmt(_)
            | NodeEnum::AlterDefaultPrivilegesStmt(_)
            | NodeEnum::CreateTrigStmt(_)
            | NodeEnum::CreatePolicyStmt(_)
            | NodeEnum::AlterPolicyStmt(_)
            | NodeEnum::RuleStmt(_)
            | NodeEnum::AlterObjectSchemaStmt(_)
            | NodeEnum::AlterOwnerStmt(_)
            | NodeEnum::CreateTableAsStmt(_)
            | NodeEnum::RefreshMatViewStmt(_)
            | NodeEnum::TruncateStmt(_)
            | NodeEnum::VacuumStmt(_)
            | NodeEnum::ReindexStmt(_)
            | NodeEnum::ClusterStmt(_)
            | NodeEnum::CreateStatsStmt(_)
    )
}

/// Collects `col = value`, `col IN (...)` and `col = col` from the AND-ed parts of `expr`.
fn conjuncts(
    expr: Option<&pg_query::protobuf::Node>,
    f: &mut StatementFacts,
    value: &dyn Fn(&pg_query::protobuf::Node) -> Option<ValueSrc>,
    column_ref: &dyn Fn(&pg_query::protobuf::Node) -> Option<ColRef>,
) {
    let Some(node) = expr.and_then(|e| e.node.as_ref()) else {
        return;
    };
    match node {
        NodeEnum::BoolExpr(b) if b.boolop == BoolExprType::AndExpr as i32 => {
            for a in &b.args {
                conjuncts(Some(a), f, value, column_ref);
            }
        }
        NodeEnum::AExpr(e) if is_equals(&e.name) => {
            let (Some(l), Some(r)) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else {
                return;
            };
            if e.kind == AExprKind::AexprOp as i32 {
                match (column_ref(l), column_ref(r), value(l), value(r)) {
                    (Some(a), Some(b), ..) => f.joins.push((a, b)),
                    (Some(c), None, _, Some(v)) | (None, Some(c), Some(v), _) => {
                        f.conds.push((c, vec![v]))
                    }
                    _ => {}
                }
            } else if e.kind == AExprKind::AexprIn as i32 {
                let (Some(c), Some(NodeEnum::List(list))) = (column_ref(l), r.node.as_ref()) else {
                    return;
                };
                let values: Option<Vec<ValueSrc>> = list.items.iter().map(value).collect();
                if let Some(values) = values {
                    f.conds.push((c, values));
                }
            }
        }
        _ => {}
    }
}

fn is_equals(name: &[pg_query::protobuf::Node]) -> bool {
    matches!(name, [n] if matches!(&n.node, Some(NodeEnum::String(s)) if s.sval == "="))
}

/// The level of a join: that of the first table under it (`USING` names no location).
fn join_level(j: &pg_query::protobuf::JoinExpr, levels: &Levels) -> u32 {
    let mut side = j.larg.as_deref();
    while let Some(n) = side.and_then(|n| n.node.as_ref()) {
        match n {
            NodeEnum::RangeVar(r) => return levels.relation(r.location),
            NodeEnum::JoinExpr(inner) => side = inner.larg.as_deref(),
            _ => break,
        }
    }
    super::levels::UNKNOWN
}

/// `qualifier.column` or `column` (a `schema.table.column` keeps the table as qualifier),
/// with the level it is written at.
fn column_ref(n: &pg_query::protobuf::Node, levels: &Levels) -> Option<ColRef> {
    let n = match &n.node {
        Some(NodeEnum::TypeCast(t)) => t.arg.as_deref()?,
        _ => n,
    };
    let Some(NodeEnum::ColumnRef(c)) = &n.node else {
        return None;
    };
    let names: Vec<&str> = c
        .fields
        .iter()
        .map(|f| match &f.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let (column, rest) = names.split_last()?;
    let (level, filters) = levels.column(c.location);
    Some(ColRef {
        qualifier: rest.last().map(|q| q.to_string()),
        column: column.to_string(),
        level,
        filters,
    })
}

/// The OID of a cast's target type, for the types a sharding key's parameter is decoded from
/// (an array type or any other is [`keys::oid::OTHER`](super::keys::oid::OTHER)).
fn cast_oid(name: Option<&pg_query::protobuf::TypeName>) -> u32 {
    use super::keys::oid;
    let Some(name) = name.filter(|n| n.array_bounds.is_empty()) else {
        return oid::OTHER;
    };
    let last = name.names.last().and_then(|n| match &n.node {
        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
        _ => None,
    });
    match last {
        Some("text") => oid::TEXT,
        Some("varchar") => oid::VARCHAR,
        Some("uuid") => oid::UUID,
        Some("int2") => oid::INT2,
        Some("int4") => oid::INT4,
        Some("int8") => oid::INT8,
        _ => oid::OTHER,
    }
}

/// A literal (possibly cast) or a parameter, located in the text.
fn value_src(n: &pg_query::protobuf::Node, sql: &[u8], spans: &[Range<usize>]) -> Option<ValueSrc> {
    match n.node.as_ref()? {
        NodeEnum::TypeCast(t) => match value_src(t.arg.as_deref()?, sql, spans)? {
            // The innermost cast on a parameter is the type the server gives it.
            ValueSrc::Param { n, cast: 0 } => Some(ValueSrc::Param {
                n,
                cast: cast_oid(t.type_name.as_ref()),
            }),
            other => Some(other),
        },
        NodeEnum::ParamRef(p) => u16::try_from(p.number)
            .ok()
            .filter(|n| *n > 0)
            .map(|n| ValueSrc::Param { n, cast: 0 }),
        NodeEnum::AConst(k) if !k.isnull => {
            use pg_query::protobuf::a_const::Val;
            if !matches!(k.val, Some(Val::Ival(_) | Val::Fval(_) | Val::Sval(_))) {
                return None;
            }
            let loc = usize::try_from(k.location).ok()?;
            let negate = sql.get(loc) == Some(&b'-');
            let from = if negate { loc + 1 } else { loc };
            let i = spans.partition_point(|s| s.start < from);
            let span = spans.get(i)?;
            let gap = sql.get(from..span.start)?;
            let adjacent = gap.is_empty()
                || gap.eq_ignore_ascii_case(b"e")
                || (negate && gap.iter().all(u8::is_ascii_whitespace));
            adjacent.then_some(ValueSrc::Literal {
                index: u32::try_from(i).ok()?,
                negate,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::normalize::literal_spans;

    fn facts(sql: &str) -> StatementFacts {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::default()).unwrap();
        let stmt = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .unwrap()
            .node
            .as_ref()
            .unwrap();
        statement_facts(stmt, sql.as_bytes(), &literal_spans(sql.as_bytes()))
    }

    fn lit(index: u32) -> ValueSrc {
        ValueSrc::Literal {
            index,
            negate: false,
        }
    }

    fn col(q: Option<&str>, c: &str) -> ColRef {
        ColRef {
            qualifier: q.map(str::to_string),
            column: c.to_string(),
            level: 0,
            filters: true,
        }
    }

    #[test]
    fn where_conditions_and_joins() {
        let f = facts("SELECT * FROM app.children c JOIN user_progress p ON p.family_id = c.family_id \
                       WHERE c.family_id = 'abc' AND p.status = 'done' AND 7 = c.x AND c.family_id IN ($1, $2::uuid)");
        assert_eq!(f.tables.len(), 2);
        assert_eq!(f.tables[0].schema.as_deref(), Some("app"));
        assert_eq!(f.tables[0].alias.as_deref(), Some("c"));
        assert!(!f.tables[0].written);
        assert_eq!(
            f.joins,
            vec![(col(Some("p"), "family_id"), col(Some("c"), "family_id"))]
        );
        assert_eq!(
            f.conds,
            vec![
                (col(Some("c"), "family_id"), vec![lit(0)]),
                (col(Some("p"), "status"), vec![lit(1)]),
                (col(Some("c"), "x"), vec![lit(2)]),
                (
                    col(Some("c"), "family_id"),
                    vec![
                        ValueSrc::Param { n: 1, cast: 0 },
                        ValueSrc::Param {
                            n: 2,
                            cast: super::super::keys::oid::UUID
                        }
                    ]
                ),
            ]
        );
        // OR branches never give a key.
        assert!(facts("SELECT * FROM t WHERE a = 1 OR a = 2")
            .conds
            .is_empty());
    }

    #[test]
    fn literals_in_every_form() {
        let f = facts("SELECT * FROM t WHERE a = -5 AND b = E'x' AND c = uuid 'u' AND d = '4'::bigint AND e = $$z$$");
        let values: Vec<ValueSrc> = f.conds.iter().map(|(_, v)| v[0]).collect();
        assert_eq!(
            values,
            vec![
                ValueSrc::Literal {
                    index: 0,
                    negate: true
                },
                lit(1),
                lit(2),
                lit(3),
                lit(4)
            ]
        );
    }

    #[test]
    fn inserts_updates_and_ctes() {
        let f =
            facts("INSERT INTO children (id, family_id, name) VALUES (1, 10, 'a'), ($1, $2, 'b')");
        assert!(f.tables[0].written);
        assert_eq!(f.inserts[0].columns.as_ref().unwrap()[1], "family_id");
        let rows = f.inserts[0].rows.as_ref().unwrap();
        assert_eq!(rows[0][1], RowValue::Value(lit(1)));
        assert_eq!(
            rows[1][1],
            RowValue::Value(ValueSrc::Param { n: 2, cast: 0 })
        );
        let f = facts("INSERT INTO progress (family_id, n) SELECT c.family_id, now() FROM children c WHERE c.family_id = 5");
        // The selected rows are a level below the INSERT.
        assert_eq!(
            f.inserts[0].rows.as_ref().unwrap()[0][0],
            RowValue::Column(ColRef {
                level: 1,
                ..col(Some("c"), "family_id")
            })
        );
        assert_eq!(f.inserts[0].rows.as_ref().unwrap()[0][1], RowValue::Other);
        assert_eq!(f.conds.len(), 1);
        let f = facts("UPDATE children SET family_id = 3, name = upper(name) WHERE family_id = 2");
        assert_eq!(
            f.sets,
            vec![
                (0, "family_id".into(), Some(lit(0))),
                (0, "name".into(), None)
            ]
        );
        let f = facts("WITH x AS (SELECT * FROM families WHERE id = 1) SELECT * FROM x, pg_class");
        assert_eq!(f.tables.len(), 1);
        assert_eq!(f.tables[0].name, "families");
        assert!(facts("CREATE TABLE t (a int)").broadcast);
        assert!(facts("TRUNCATE t").broadcast);
        assert_eq!(facts("COPY children FROM STDIN").copy_in, Some(0));
        let f = facts("SELECT * FROM a JOIN b USING (family_id) WHERE a.family_id = 1");
        assert_eq!(f.joins.len(), 1);
        let f = facts("SELECT * FROM children WHERE id IN (SELECT child_id FROM user_progress WHERE family_id = 4)");
        assert_eq!(f.tables.len(), 2);
        assert_eq!(f.conds.len(), 1);
    }
}
