//! The query levels of one statement: the statement itself, and each subquery, CTE, VALUES
//! list, set-operation branch and nested DML under it. A `column = value` condition narrows
//! only the rows of its own level: `WHERE id = 1` beside a subquery over the same table says
//! nothing about the subquery's rows. So every column reference and table reference is tagged
//! with its level, and placement only lets a condition pin tables of its level (and a key
//! equality carry a pin from an outer level inward, as a correlated subquery does).
//!
//! A condition also pins only where it filters the level's rows: in WHERE, or in the ON of an
//! inner join that no outer join encloses. The ON of a LEFT/RIGHT/FULL join keeps the
//! preserved side's rows whatever it says, so its conditions pin nothing.
//!
//! The levels are read from the tree's serialized form (see `router::walk`), so no place a
//! subquery may sit in is missed.

use std::collections::HashMap;

use serde_json::Value;

/// Level of a reference the walk did not see (it pins nothing and resolves nowhere).
pub const UNKNOWN: u32 = u32::MAX;

/// `JoinType::JoinInner` as serialized.
const JOIN_INNER: i64 = 1;

/// The statement kinds that open a query level of their own when nested.
const LEVEL_KINDS: [&str; 5] = [
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
];

/// The levels of one statement and where each reference sits.
#[derive(Debug, Default)]
pub struct Levels {
    /// Parent of each level; level 0 is the statement itself.
    pub parents: Vec<u32>,
    /// Column references by location: (level, whether a condition there filters the level).
    columns: HashMap<i64, (u32, bool)>,
    /// Table references (RangeVar) by location: their level.
    relations: HashMap<i64, u32>,
    /// Names that FROM items give at each level (table name or alias, subquery alias), for
    /// resolving a qualified column to its level.
    pub names: Vec<(u32, String)>,
}

impl Levels {
    /// Walks `tree`, one statement as serialized (`{"SelectStmt": {...}}`).
    pub fn of(tree: &Value) -> Levels {
        let mut levels = Levels {
            parents: vec![0],
            ..Levels::default()
        };
        if let Value::Object(map) = tree {
            // The statement itself is level 0; statements nested in it open levels of their own.
            for (kind, body) in map {
                levels.statement(kind, body, 0);
            }
        }
        levels
    }

    /// The level and filtering flag of the column reference at `location`.
    pub fn column(&self, location: i32) -> (u32, bool) {
        self.columns
            .get(&i64::from(location))
            .copied()
            .unwrap_or((UNKNOWN, false))
    }

    /// The level of the table reference at `location`.
    pub fn relation(&self, location: i32) -> u32 {
        self.relations
            .get(&i64::from(location))
            .copied()
            .unwrap_or(UNKNOWN)
    }

    fn node(&mut self, kind: &str, body: &Value, level: u32, filters: bool) {
        match kind {
            "ColumnRef" => {
                if let Some(at) = body.get("location").and_then(Value::as_i64) {
                    self.columns.insert(at, (level, filters));
                }
            }
            "RangeVar" => self.relation_at(body, level),
            "RangeSubselect" | "RangeFunction" => {
                if let Some(alias) = alias_of(body) {
                    self.names.push((level, alias.to_string()));
                }
            }
            "JoinExpr" => {
                let inner = body.get("jointype").and_then(Value::as_i64) == Some(JOIN_INNER);
                self.fields(body, level, filters && inner);
                return;
            }
            _ => {}
        }
        if LEVEL_KINDS.contains(&kind) {
            let child = self.parents.len() as u32;
            self.parents.push(level);
            self.statement(kind, body, child);
        } else {
            self.fields(body, level, filters);
        }
    }

    /// A statement's fields at its own `level`; MERGE's ON keeps unmatched source rows, so
    /// it filters nothing.
    fn statement(&mut self, kind: &str, body: &Value, level: u32) {
        let Value::Object(map) = body else { return };
        for (field, v) in map {
            let filters = !(kind == "MergeStmt" && field == "join_condition");
            self.value(v, level, filters);
        }
    }

    fn fields(&mut self, body: &Value, level: u32, filters: bool) {
        if let Value::Object(map) = body {
            for v in map.values() {
                self.value(v, level, filters);
            }
        }
    }

    fn value(&mut self, v: &Value, level: u32, filters: bool) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(inner)) = map.get("node") {
                    for (kind, body) in inner {
                        self.node(kind, body, level, filters);
                    }
                    return;
                }
                // A RangeVar held directly (INSERT/UPDATE/DELETE/COPY targets).
                if map.contains_key("relname") {
                    self.relation_at(v, level);
                }
                for v in map.values() {
                    self.value(v, level, filters);
                }
            }
            Value::Array(items) => {
                for v in items {
                    self.value(v, level, filters);
                }
            }
            _ => {}
        }
    }

    fn relation_at(&mut self, body: &Value, level: u32) {
        if let Some(at) = body.get("location").and_then(Value::as_i64) {
            self.relations.insert(at, level);
        }
        let name = alias_of(body).or_else(|| body.get("relname").and_then(Value::as_str));
        if let Some(name) = name {
            self.names.push((level, name.to_string()));
        }
    }
}

fn alias_of(body: &Value) -> Option<&str> {
    body.pointer("/alias/aliasname").and_then(Value::as_str)
}
