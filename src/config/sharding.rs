//! `[databases.NAME.sharding]`: which tables are split across the shards by a key column, how
//! the key is hashed, and which tables are copied to every shard.

use serde::Deserialize;

/// How a key value picks its shard.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Hasher {
    /// XXH3-64 of the key's canonical bytes, modulo the shard count (the default; fast).
    #[default]
    Xxh3,
    /// Exactly what PostgreSQL's `PARTITION BY HASH` computes (the extended hash function of the
    /// key's type with the partition seed), modulo the shard count: shard `i` holds the rows of
    /// partition `(MODULUS n, REMAINDER i)`, so a hash-partitioned table can check usher's routing.
    Postgres,
}

/// The type of a sharding key; values are parsed into it before hashing, so `42`, `'42'` and a
/// binary int8 `42` land on the same shard.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// A 64-bit integer (smallint and integer columns hash the same way).
    #[default]
    Bigint,
    /// A UUID, in any text form PostgreSQL accepts or as 16 binary bytes.
    Uuid,
    /// Text, hashed as its UTF-8 bytes.
    Text,
}

impl KeyType {
    /// The name used in config and messages.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Bigint => "bigint",
            KeyType::Uuid => "uuid",
            KeyType::Text => "text",
        }
    }
}

/// One sharded table: its rows live on the shard of their key column.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTable {
    /// Table name, optionally schema-qualified (`"children"` or `"app.children"`); an
    /// unqualified name matches the table in any schema.
    pub name: String,
    /// The column holding the sharding key (e.g. `family_id`).
    pub column: String,
    /// Key type for this table, when it differs from the database's `key_type`.
    #[serde(default)]
    pub key_type: Option<KeyType>,
}

/// `[databases.NAME.sharding]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sharding {
    /// `"xxh3"` (default) or `"postgres"` (the same shard as Postgres `PARTITION BY HASH`).
    #[serde(default)]
    pub hasher: Hasher,
    /// Type of the sharding keys: `"bigint"` (default), `"uuid"` or `"text"`.
    #[serde(default)]
    pub key_type: KeyType,
    /// Shard that holds unlisted tables and takes statements that name no table.
    #[serde(default)]
    pub default_shard: usize,
    /// Tables split by key.
    #[serde(default)]
    pub tables: Vec<ShardedTable>,
    /// Tables with the same rows on every shard (catalogues): reads go with the statement's
    /// shard or to any shard; writes through usher are refused (load them with `usher migrate`).
    #[serde(default)]
    pub global_tables: Vec<String>,
    /// Run an UPDATE or DELETE that spans shards (no key, or keys on several shards) on every
    /// shard concerned and commit it atomically with two-phase commit (PREPARE TRANSACTION on
    /// each, then COMMIT PREPARED, the decision logged to `general.two_phase_log` first).
    /// Needs `max_prepared_transactions > 0` on every shard primary. Off (the default), such
    /// writes are refused with 0A000.
    #[serde(default)]
    pub two_phase_commit: bool,
    /// How long a write across shards waits, where no shard's deadlock detector would see
    /// a cycle: a statement across shards that writes takes turns per database and fails
    /// with 40P01 (`deadlock detected`) after waiting this long for its turn; each shard's
    /// part of a transaction block across shards runs with this `lock_timeout` (unless the
    /// client set one), so a deadlock between two of them ends with 55P03. Drivers and ORMs
    /// retry both. Default `"5s"`.
    #[serde(default = "default_two_phase_lock_timeout")]
    pub two_phase_lock_timeout: super::ConfigDuration,
    /// Not read from the file: where each sharded table's key column stands in the table's
    /// column order, learned from the catalog for INSERTs without a column list.
    #[serde(skip)]
    pub key_positions: KeyPositions,
}

fn default_two_phase_lock_timeout() -> super::ConfigDuration {
    super::ConfigDuration::secs(5)
}

/// The position of each sharded table's key column among its columns (by config table
/// name; `None` once looked up and not found), read from shard 0's catalog when an INSERT
/// without a column list first needs it, and forgotten after DDL through usher. A reload
/// starts afresh.
#[derive(Clone, Debug, Default)]
pub struct KeyPositions(
    std::sync::Arc<parking_lot::RwLock<std::collections::HashMap<String, Option<usize>>>>,
);

impl KeyPositions {
    /// What is known of `table`'s key position: `None` when never looked up.
    pub fn get(&self, table: &str) -> Option<Option<usize>> {
        self.0.read().get(table).copied()
    }

    /// Records `table`'s key position (`None`: the catalog has no such column or table).
    pub fn set(&self, table: &str, position: Option<usize>) {
        self.0.write().insert(table.to_string(), position);
    }

    /// Forgets every position (the schema may have changed).
    pub fn clear(&self) {
        self.0.write().clear();
    }
}

impl Sharding {
    /// The sharded table matching a reference to `schema.name` (unqualified config names match
    /// any schema).
    pub fn table(&self, schema: Option<&str>, name: &str) -> Option<&ShardedTable> {
        self.tables
            .iter()
            .find(|t| name_matches(&t.name, schema, name))
    }

    /// True when `schema.name` is one of the global tables.
    pub fn is_global(&self, schema: Option<&str>, name: &str) -> bool {
        self.global_tables
            .iter()
            .any(|t| name_matches(t, schema, name))
    }

    /// Key type of `table`.
    pub fn key_type_of(&self, table: &ShardedTable) -> KeyType {
        table.key_type.unwrap_or(self.key_type)
    }
}

/// Compares a configured (possibly schema-qualified) table name with a reference.
fn name_matches(configured: &str, schema: Option<&str>, name: &str) -> bool {
    match configured.split_once('.') {
        Some((s, n)) => {
            n.eq_ignore_ascii_case(name) && schema.is_some_and(|x| x.eq_ignore_ascii_case(s))
        }
        None => configured.eq_ignore_ascii_case(name),
    }
}

/// Problems with a shard map, as (key path below `sharding`, message).
pub(crate) fn problems(s: &Sharding, shards: usize) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    if s.default_shard >= shards.max(1) {
        out.push((
            vec!["default_shard".to_string()],
            format!(
                "default_shard = {} but the database has {} shard(s) (numbered from 0)",
                s.default_shard, shards
            ),
        ));
    }
    for (i, t) in s.tables.iter().enumerate() {
        let at = |k: &str| vec![format!("tables[{i}]"), k.to_string()];
        if !valid_name(&t.name) {
            out.push((
                at("name"),
                format!("{:?} is not a table name (name or schema.name)", t.name),
            ));
        }
        if !valid_ident(&t.column) {
            out.push((at("column"), format!("{:?} is not a column name", t.column)));
        }
        if let Some(j) = s.tables[..i]
            .iter()
            .position(|o| o.name.eq_ignore_ascii_case(&t.name))
        {
            out.push((
                at("name"),
                format!("table {:?} is listed twice (also tables[{j}])", t.name),
            ));
        }
        if s.global_tables
            .iter()
            .any(|g| g.eq_ignore_ascii_case(&t.name))
        {
            out.push((at("name"), format!("table {:?} is both sharded and in global_tables: a table is either split by key or copied to every shard", t.name)));
        }
    }
    for (i, g) in s.global_tables.iter().enumerate() {
        if !valid_name(g) {
            out.push((
                vec![format!("global_tables[{i}]")],
                format!("{g:?} is not a table name"),
            ));
        }
        if s.global_tables[..i]
            .iter()
            .any(|o| o.eq_ignore_ascii_case(g))
        {
            out.push((
                vec![format!("global_tables[{i}]")],
                format!("table {g:?} is listed twice"),
            ));
        }
    }
    out
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 64
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

fn valid_name(s: &str) -> bool {
    match s.split_once('.') {
        Some((a, b)) => valid_ident(a) && valid_ident(b),
        None => valid_ident(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(tables: &[(&str, &str)], global: &[&str], default_shard: usize) -> Sharding {
        Sharding {
            hasher: Hasher::Xxh3,
            key_type: KeyType::Uuid,
            default_shard,
            tables: tables
                .iter()
                .map(|(n, c)| ShardedTable {
                    name: n.to_string(),
                    column: c.to_string(),
                    key_type: None,
                })
                .collect(),
            global_tables: global.iter().map(|s| s.to_string()).collect(),
            key_positions: KeyPositions::default(),
            two_phase_commit: false,
            two_phase_lock_timeout: crate::config::ConfigDuration::secs(5),
        }
    }

    #[test]
    fn lookups_and_problems() {
        let s = map(
            &[("families", "id"), ("app.children", "family_id")],
            &["lessons"],
            0,
        );
        assert!(s.table(None, "FAMILIES").is_some());
        assert!(s.table(Some("public"), "families").is_some());
        assert!(s.table(None, "children").is_none());
        assert!(s.table(Some("app"), "children").is_some());
        assert!(s.is_global(Some("public"), "lessons"));
        assert!(problems(&s, 4).is_empty());
        let bad = map(
            &[("a", "id"), ("A", "x"), ("lessons", "id")],
            &["lessons", "lessons"],
            4,
        );
        let p: Vec<String> = problems(&bad, 4)
            .into_iter()
            .map(|(k, m)| format!("{}: {m}", k.join(".")))
            .collect();
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("default_shard: default_shard = 4 but the database has 4"));
        assert!(p[1].contains("tables[1].name") && p[1].contains("listed twice"));
        assert!(p[2].contains("both sharded and in global_tables"));
        assert!(p[3].contains("global_tables[1]"));
    }
}
