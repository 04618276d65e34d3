//! Sharding: which shard runs a statement. The facts a statement carries (tables, key
//! conditions, inserted rows; see [`facts`]) are combined with the database's shard map and the
//! statement's actual values (literals in the text, bind parameters) into a [`Placement`], or
//! a [`ShardError`] naming the table and what is missing. usher never guesses: a statement on a
//! sharded table whose key it cannot find is refused, not sent to shard 0.

pub mod facts;
pub mod hash;
pub mod keys;
pub mod levels;

use crate::config::{KeyType, ShardedTable, Sharding};
use facts::{ColRef, RowValue, StatementFacts, ValueSrc};
pub use hash::shard_for;
pub use keys::{BadKey, KeyValue};

/// Where a statement (or a whole query string) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The shard owning its key (or named by a hint).
    Shard(usize),
    /// Every shard's primary (DDL, maintenance).
    Broadcast,
    /// Only unlisted tables: the default shard.
    Unlisted,
    /// Only global tables, read: any shard.
    AnyShard,
    /// No table at all (`SELECT 1`, `SET`, `SHOW`): wherever the session is.
    NoTable,
    /// It needs bind values that have not arrived (a Parse/Describe before any Bind): any shard
    /// can prepare it.
    Unbound,
}

/// A routing hint: `/* usher: shard=N */`, `/* usher: key=V */` or their `SET usher.*` forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardHint {
    /// A shard number.
    Shard(usize),
    /// A key value (text form, parsed with the database's `key_type`).
    Key(String),
}

/// Why a statement cannot run on one shard. Reported to the client (the session goes on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// A sharded table without a key condition.
    #[error("usher: no sharding key for table {table:?}: add WHERE {column} = <value> (or a join on {column} to a table that has one), or a /* usher: key=... */ hint")]
    MissingKey {
        /// The table.
        table: String,
        /// Its key column.
        column: String,
    },
    /// Key values (or statements) that map to different shards.
    #[error("usher: {what} map to different shards ({shards:?}); statements spanning shards are not run by usher")]
    CrossShard {
        /// What spans shards.
        what: String,
        /// The shards involved.
        shards: Vec<usize>,
    },
    /// A write to a global table.
    #[error("usher: table {table:?} is a global table (the same rows on every shard): a write to it runs on every shard, which needs two_phase_commit = true in the database's [sharding] section (or load it with `usher migrate`, or a /* usher: shard=N */ hint per shard)")]
    GlobalWrite {
        /// The table.
        table: String,
    },
    /// An INSERT into a sharded table without a column list, whose key column the catalog
    /// did not show.
    #[error("usher: INSERT into sharded table {table:?} without a column list, and usher could not find the position of {column} in the table (list the columns)")]
    InsertColumns {
        /// The table.
        table: String,
        /// Its key column.
        column: String,
    },
    /// The key of an inserted row or an UPDATE is an expression usher cannot evaluate.
    #[error("usher: the {column} of table {table:?} must be a literal or a parameter, not an expression, so usher can pick the shard")]
    KeyNotValue {
        /// The table.
        table: String,
        /// Its key column.
        column: String,
    },
    /// The key column is NULL.
    #[error("usher: the sharding key {column} of table {table:?} is NULL")]
    NullKey {
        /// The table.
        table: String,
        /// Its key column.
        column: String,
    },
    /// A key value that does not parse as the key type.
    #[error("usher: {0}")]
    BadKey(#[from] BadKey),
    /// A shard hint out of range.
    #[error("usher: shard {shard} does not exist (this database has shards 0 to {last})")]
    NoSuchShard {
        /// The shard asked for.
        shard: usize,
        /// The highest shard number.
        last: usize,
    },
    /// COPY FROM into a sharded table (rows would need splitting).
    #[error("usher: COPY into sharded table {table:?} is not split across shards; COPY one shard's rows at a time with a /* usher: shard=N */ or key hint")]
    CopyIn {
        /// The table.
        table: String,
    },
    /// A read without one shard whose rows cannot be merged exactly across shards.
    #[error("{why}; a query across shards is run by usher only when its rows merge exactly, and this one has {construct}")]
    NotMergeable {
        /// Why it needs more than one shard.
        why: Box<ShardError>,
        /// The construct that stops the merge.
        construct: String,
    },
    /// An UPDATE or DELETE without one shard that cannot run exactly on each shard.
    #[error("{why}; a write across shards is run by usher only when each shard computes what one database would, and this one has {construct}")]
    WriteAcross {
        /// Why it needs more than one shard.
        why: Box<ShardError>,
        /// The construct that stops it.
        construct: String,
    },
    /// An UPDATE or DELETE without one shard, in a database without two-phase commit.
    #[error("{why}; a write across shards needs two_phase_commit = true in the database's [sharding] section (and max_prepared_transactions > 0 on the shards)")]
    NoTwoPhase {
        /// Why it needs more than one shard.
        why: Box<ShardError>,
    },
    /// Schema changes mixed with other statements in one query string.
    #[error("usher: DDL runs on every shard and cannot share a query string with other statements; send it on its own")]
    MixedBroadcast,
}

/// A statement usher cannot place: the client's to change.
impl crate::error::Failure for ShardError {
    fn side(&self) -> crate::error::Side {
        crate::error::Side::Client
    }

    fn sqlstate(&self) -> &str {
        ShardError::sqlstate(self)
    }

    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}

impl ShardError {
    /// SQLSTATE for the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ShardError::BadKey(_) => "22P02",
            ShardError::NullKey { .. } => "22004",
            ShardError::NoSuchShard { .. } => "22023",
            _ => "0A000",
        }
    }
}

/// A bind parameter as it arrived: format (0 text, 1 binary), declared type OID, bytes.
#[derive(Debug, Clone, Copy)]
pub struct Param<'a> {
    /// 0 = text, 1 = binary.
    pub format: i16,
    /// Type OID from the Parse (0 = let the server infer it).
    pub type_oid: u32,
    /// The value (None = NULL).
    pub value: Option<&'a [u8]>,
}

/// Supplies the values a statement's facts point at.
pub trait Values {
    /// The text of the `index`-th literal (unquoted, unescaped).
    fn literal(&mut self, index: u32) -> Option<Vec<u8>>;
    /// Bind parameter `$n`; `None` when no Bind is known (the statement is only being prepared).
    fn param(&mut self, n: u16) -> Option<Param<'_>>;
}

/// The shard of a hinted key or number.
pub fn hinted(hint: &ShardHint, map: &Sharding, shards: usize) -> Result<usize, ShardError> {
    match hint {
        ShardHint::Shard(s) if *s < shards => Ok(*s),
        ShardHint::Shard(s) => Err(ShardError::NoSuchShard {
            shard: *s,
            last: shards.saturating_sub(1),
        }),
        ShardHint::Key(k) => {
            let key = keys::from_text(k.as_bytes(), map.key_type)?;
            Ok(shard_for(map.hasher, &key, shards))
        }
    }
}

/// Where the statements of one query string run together.
pub fn place(
    statements: &[StatementFacts],
    map: &Sharding,
    shards: usize,
    values: &mut dyn Values,
) -> Result<Placement, ShardError> {
    let mut result = Placement::NoTable;
    for f in statements {
        result = combine(result, place_one(f, map, shards, values)?)?;
    }
    Ok(result)
}

/// The placement of two statements that run together (one query string, or one pipelined
/// batch): the same shard, or an error.
pub fn combine(a: Placement, b: Placement) -> Result<Placement, ShardError> {
    Ok(match (a, b) {
        (Placement::NoTable, p) | (p, Placement::NoTable) => p,
        (Placement::Broadcast, Placement::Broadcast) => Placement::Broadcast,
        (Placement::Broadcast, _) | (_, Placement::Broadcast) => {
            return Err(ShardError::MixedBroadcast)
        }
        (Placement::Shard(a), Placement::Shard(b)) if a != b => {
            return Err(ShardError::CrossShard {
                what: "the statements sent together".into(),
                shards: vec![a, b],
            })
        }
        (a, b) => std::cmp::min_by_key(a, b, rank),
    })
}

/// Which placement wins when statements are combined (lower wins).
fn rank(p: &Placement) -> u8 {
    match p {
        Placement::Shard(_) => 0,
        Placement::Unbound => 1,
        Placement::Unlisted => 2,
        Placement::AnyShard => 3,
        Placement::NoTable => 4,
        Placement::Broadcast => 5,
    }
}

/// One sharded table reference being resolved.
struct Ref<'a> {
    index: usize,
    table: &'a ShardedTable,
    key_type: KeyType,
    covered: bool,
}

fn place_one(
    f: &StatementFacts,
    map: &Sharding,
    shards: usize,
    values: &mut dyn Values,
) -> Result<Placement, ShardError> {
    if f.broadcast {
        return Ok(Placement::Broadcast);
    }
    let mut refs: Vec<Ref> = Vec::new();
    let (mut unlisted, mut global) = (false, false);
    for (i, t) in f.tables.iter().enumerate() {
        if let Some(st) = map.table(t.schema.as_deref(), &t.name) {
            refs.push(Ref {
                index: i,
                table: st,
                key_type: map.key_type_of(st),
                covered: false,
            });
        } else if map.is_global(t.schema.as_deref(), &t.name) {
            if t.written {
                return Err(ShardError::GlobalWrite {
                    table: t.name.clone(),
                });
            }
            global = true;
        } else {
            unlisted = true;
        }
    }
    if refs.is_empty() {
        return Ok(if unlisted {
            Placement::Unlisted
        } else if global {
            Placement::AnyShard
        } else {
            Placement::NoTable
        });
    }
    if let Some(r) = refs.iter().find(|r| Some(r.index) == f.copy_in) {
        return Err(ShardError::CopyIn {
            table: r.table.name.clone(),
        });
    }
    let mut found: Vec<(usize, &str)> = Vec::new(); // (shard, table)
    let mut unbound = false;
    // INSERT ... SELECT: the target's key comes from this column of the selected rows.
    let mut key_sources: Vec<(usize, &ColRef)> = Vec::new();
    let names = |r: &Ref| (r.table.name.clone(), r.table.column.clone());
    // WHERE / ON conditions pin the tables of their own level, where they filter its rows.
    for (col, srcs) in &f.conds {
        if !col.filters {
            continue;
        }
        for r in refs.iter_mut() {
            let t = &f.tables[r.index];
            if t.level == col.level && t.owns(col, &r.table.column) && f.resolves(col, r.index) {
                r.covered = true;
                for src in srcs {
                    match eval(*src, r.key_type, values).map_err(|e| fill(e, names(r)))? {
                        Some(k) => {
                            let t: &ShardedTable = r.table;
                            found.push((shard_for(map.hasher, &k, shards), t.name.as_str()))
                        }
                        None => unbound = true,
                    }
                }
            }
        }
    }
    // UPDATE ... SET key = ...: the new key must stay on the same shard.
    for (t, column, v) in &f.sets {
        if let Some(r) = refs
            .iter()
            .find(|r| r.index == *t && r.table.column == *column)
        {
            let st: &ShardedTable = r.table;
            let (table, column) = names(r);
            let Some(src) = v else {
                return Err(ShardError::KeyNotValue { table, column });
            };
            match eval(*src, r.key_type, values).map_err(|e| fill(e, names(r)))? {
                Some(k) => found.push((shard_for(map.hasher, &k, shards), st.name.as_str())),
                None => unbound = true,
            }
        }
    }
    // INSERTed rows.
    for ins in &f.inserts {
        let Some(r) = refs.iter_mut().find(|r| r.index == ins.table) else {
            continue;
        };
        let st: &ShardedTable = r.table;
        let (table, column) = names(r);
        let pos = key_in_row(ins, map, st)?;
        let Some(rows) = &ins.rows else {
            return Err(ShardError::KeyNotValue { table, column });
        };
        let mut from_columns = false;
        for row in rows {
            match row.get(pos) {
                Some(RowValue::Value(src)) => {
                    match eval(*src, r.key_type, values).map_err(|e| fill(e, names(r)))? {
                        Some(k) => {
                            found.push((shard_for(map.hasher, &k, shards), st.name.as_str()))
                        }
                        None => unbound = true,
                    }
                }
                Some(RowValue::Column(c)) => {
                    key_sources.push((r.index, c));
                    from_columns = true;
                }
                _ => return Err(ShardError::KeyNotValue { table, column }),
            }
        }
        // Keys from selected columns are covered once the tables they come from are.
        r.covered = !from_columns;
    }
    // Joins on the key carry coverage from one sharded table to another: within a level
    // both ways, and from an outer level inward (a correlated subquery), never outward.
    loop {
        let mut changed = false;
        for (a, b) in &f.joins {
            for (x, y) in [(a, b), (b, a)] {
                let from = refs.iter().any(|r| {
                    r.covered
                        && f.tables[r.index].owns(x, &r.table.column)
                        && f.resolves(x, r.index)
                        && f.encloses(f.tables[r.index].level, y.level)
                });
                if from {
                    for r in refs.iter_mut() {
                        let t = &f.tables[r.index];
                        if !r.covered
                            && t.level == y.level
                            && t.owns(y, &r.table.column)
                            && f.resolves(y, r.index)
                        {
                            r.covered = true;
                            changed = true;
                        }
                    }
                }
            }
        }
        for (target, c) in &key_sources {
            let from = refs.iter().any(|r| {
                r.covered && f.tables[r.index].owns(c, &r.table.column) && f.resolves(c, r.index)
            });
            if let Some(r) = refs.iter_mut().find(|r| r.index == *target && !r.covered) {
                if from {
                    r.covered = true;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    if let Some(r) = refs.iter().find(|r| !r.covered) {
        return Err(ShardError::MissingKey {
            table: r.table.name.clone(),
            column: r.table.column.clone(),
        });
    }
    let mut shards_seen: Vec<usize> = found.iter().map(|(s, _)| *s).collect();
    shards_seen.sort_unstable();
    shards_seen.dedup();
    match shards_seen.as_slice() {
        [s] if !unbound => Ok(Placement::Shard(*s)),
        [] | [_] => Ok(Placement::Unbound),
        many => {
            let mut tables: Vec<&str> = found.iter().map(|(_, t)| *t).collect();
            tables.dedup();
            Err(ShardError::CrossShard {
                what: format!("the sharding keys given for {}", tables.join(", ")),
                shards: many.to_vec(),
            })
        }
    }
}

/// Where the key column `st.column` stands in each row of the INSERT `ins`: its place in
/// the column list, or without one its place in the table, once the catalog told it
/// (`Sharding::key_positions`).
fn key_in_row(
    ins: &facts::InsertFacts,
    map: &Sharding,
    st: &ShardedTable,
) -> Result<usize, ShardError> {
    let (table, column) = (st.name.clone(), st.column.clone());
    match &ins.columns {
        Some(cols) => cols
            .iter()
            .position(|c| *c == column)
            .ok_or(ShardError::MissingKey { table, column }),
        None => match map.key_positions.get(&st.name) {
            Some(Some(pos)) => Ok(pos),
            _ => Err(ShardError::InsertColumns { table, column }),
        },
    }
}

/// The shard of each row of the one multi-row INSERT in `f`, in order: the rows of a
/// `VALUES` list whose keys are literals or bound parameters. `Ok(None)` when `f` is not
/// such an INSERT into a sharded table (or a parameter is not bound yet).
pub fn insert_rows(
    f: &StatementFacts,
    map: &Sharding,
    shards: usize,
    values: &mut dyn Values,
) -> Result<Option<Vec<usize>>, ShardError> {
    let [ins] = f.inserts.as_slice() else {
        return Ok(None);
    };
    let Some(t) = f.tables.get(ins.table) else {
        return Ok(None);
    };
    let Some(st) = map.table(t.schema.as_deref(), &t.name) else {
        return Ok(None);
    };
    let (table, column) = (st.name.clone(), st.column.clone());
    let pos = key_in_row(ins, map, st)?;
    let Some(rows) = &ins.rows else {
        return Ok(None);
    };
    let key_type = map.key_type_of(st);
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(RowValue::Value(src)) = row.get(pos) else {
            return Err(ShardError::KeyNotValue { table, column });
        };
        match eval(*src, key_type, values).map_err(|e| fill(e, (table.clone(), column.clone())))? {
            Some(k) => out.push(shard_for(map.hasher, &k, shards)),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// Puts the table and column into a NULL-key error.
fn fill(e: ShardError, (table, column): (String, String)) -> ShardError {
    match e {
        ShardError::NullKey { .. } => ShardError::NullKey { table, column },
        e => e,
    }
}

/// The key value at `src`; `Ok(None)` when it is a parameter not bound yet.
fn eval(
    src: ValueSrc,
    key_type: KeyType,
    values: &mut dyn Values,
) -> Result<Option<KeyValue>, ShardError> {
    let null = || ShardError::NullKey {
        table: String::new(),
        column: String::new(),
    };
    match src {
        ValueSrc::Literal { index, negate } => {
            let Some(mut text) = values.literal(index) else {
                return Ok(None);
            };
            if negate {
                text.insert(0, b'-');
            }
            Ok(Some(keys::from_text(&text, key_type)?))
        }
        ValueSrc::Param { n, cast } => match values.param(n) {
            None => Ok(None),
            Some(Param { value: None, .. }) => Err(null()),
            Some(Param {
                format: 1,
                type_oid,
                value: Some(v),
            }) => {
                // A type the Parse left to the server is the one the cast gives it.
                let declared = if type_oid == 0 { cast } else { type_oid };
                Ok(Some(keys::from_binary(v, declared, key_type)?))
            }
            Some(Param { value: Some(v), .. }) => Ok(Some(keys::from_text(v, key_type)?)),
        },
    }
}

pub mod values;

#[cfg(test)]
mod place_tests;
