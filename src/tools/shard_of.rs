//! `usher shard-of`: the shard that owns a key, with the reasoning (key type, canonical value,
//! hash, modulus), exactly as the proxy computes it.

use crate::config::{Config, Hasher, KeyType};
use crate::router::shard::hash::partition_hash;
use crate::router::shard::{keys, shard_for};

/// Why `shard-of` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ShardOfError {
    /// The database is not in the config.
    #[error("config: no database {0:?} in the config file")]
    NoDatabase(String),
    /// `--database` is needed to choose among several.
    #[error("config: several databases are sharded ({0}); pick one with --database")]
    Ambiguous(String),
    /// The table is not a sharded table of the database.
    #[error("config: table {table:?} is not a sharded table of database {database:?}")]
    NoTable {
        /// Database.
        database: String,
        /// Table.
        table: String,
    },
    /// The key does not parse as the key type.
    #[error("{0}")]
    BadKey(#[from] keys::BadKey),
}

/// The answer: shard number and a one-line explanation.
pub fn shard_of(
    config: &Config,
    database: Option<&str>,
    table: Option<&str>,
    key: &str,
) -> Result<(usize, String), ShardOfError> {
    let name = match database {
        Some(d) => d.to_string(),
        None => {
            let sharded: Vec<&String> = config
                .databases
                .iter()
                .filter(|(_, d)| d.sharding.is_some())
                .map(|(n, _)| n)
                .collect();
            match sharded.as_slice() {
                [one] => one.to_string(),
                [] => config.databases.keys().next().cloned().unwrap_or_default(),
                many => {
                    return Err(ShardOfError::Ambiguous(
                        many.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    ))
                }
            }
        }
    };
    let db = config
        .databases
        .get(&name)
        .ok_or_else(|| ShardOfError::NoDatabase(name.clone()))?;
    let shards = db.shards.len();
    let Some(map) = &db.sharding else {
        return Ok((
            0,
            format!(
                "shard 0 ({}): database {name:?} has no shard map, so every key is on shard 0",
                db.shards[0].primary.addr
            ),
        ));
    };
    let key_type: KeyType = match table {
        Some(t) => {
            let (schema, bare) = match t.split_once('.') {
                Some((s, n)) => (Some(s), n),
                None => (None, t),
            };
            let st = map
                .table(schema, bare)
                .ok_or_else(|| ShardOfError::NoTable {
                    database: name.clone(),
                    table: t.to_string(),
                })?;
            map.key_type_of(st)
        }
        None => map.key_type,
    };
    let value = keys::from_text(key.as_bytes(), key_type)?;
    let shard = shard_for(map.hasher, &value, shards);
    let why = match map.hasher {
        Hasher::Xxh3 => format!(
            "xxh3 of {} {value} = {:#018x}, modulo {shards} shards = {shard}",
            key_type.name(),
            match &value {
                keys::KeyValue::Int(v) => xxhash_rust::xxh3::xxh3_64(&v.to_be_bytes()),
                keys::KeyValue::Uuid(u) => xxhash_rust::xxh3::xxh3_64(u),
                keys::KeyValue::Text(t) => xxhash_rust::xxh3::xxh3_64(t),
            }
        ),
        Hasher::Postgres => format!(
            "Postgres partition hash of {} {value} = {:#018x}, modulo {shards} shards = {shard} (the rows of FOR VALUES WITH (MODULUS {shards}, REMAINDER {shard}))",
            key_type.name(),
            partition_hash(&value)
        ),
    };
    Ok((
        shard,
        format!("shard {shard} ({}): {why}", db.shards[shard].primary.addr),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_the_shard() {
        let text = "[[users]]\nname = \"a\"\npassword = \"p\"\n[databases.app]\nshards = [ { primary = \"h:1/s0\" }, { primary = \"h:1/s1\" }, { primary = \"h:1/s2\" }, { primary = \"h:1/s3\" } ]\n[databases.app.sharding]\nhasher = \"postgres\"\nkey_type = \"bigint\"\ntables = [ { name = \"families\", column = \"id\" }, { name = \"tags\", column = \"name\", key_type = \"text\" } ]\n";
        let c = crate::config::load_str(text, std::path::Path::new("t.toml")).unwrap();
        // PostgreSQL puts bigint 1 in remainder 0 and 2 in remainder 2 (see hash.rs).
        let (s, why) = shard_of(&c, None, None, "1").unwrap();
        assert_eq!(s, 0, "{why}");
        assert!(
            why.contains("h:1/s0") && why.contains("REMAINDER 0"),
            "{why}"
        );
        assert_eq!(
            shard_of(&c, Some("app"), None, "'2'".trim_matches('\''))
                .unwrap()
                .0,
            2
        );
        assert!(shard_of(&c, None, Some("tags"), "abc").is_ok());
        assert!(shard_of(&c, None, None, "abc")
            .unwrap_err()
            .to_string()
            .contains("not a valid bigint"));
        assert!(shard_of(&c, None, Some("nope"), "1").is_err());
        assert!(shard_of(&c, Some("other"), None, "1").is_err());
    }
}
