//! The column defaults of tables that INSERTs split across shards write, and where a sharded
//! table's key column stands for INSERTs without a column list: read from the catalog of
//! shard 0's primary once per table, cached, and forgotten when DDL runs through usher (or a
//! reload), so a changed table is read again.

use std::sync::Arc;

use super::App;
use crate::config::Config;
use crate::router::fanout_insert::ColumnDefault;

impl App {
    /// The defaults (and identity columns) of `schema.table` in `database`.
    pub async fn column_defaults(
        &self,
        config: &Config,
        database: &str,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Arc<Vec<ColumnDefault>>, String> {
        let name = match schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(table)),
            None => quote_ident(table),
        };
        let key = (database.to_string(), name.clone());
        if let Some(d) = self.defaults.lock().get(&key) {
            return Ok(d.clone());
        }
        let db = config
            .databases
            .get(database)
            .ok_or_else(|| format!("database {database:?} is no longer configured"))?;
        let shard = db.shards.first().ok_or("a database without shards")?;
        let sql = "SELECT a.attname::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity <> '' \
                   FROM pg_catalog.pg_attribute a \
                   LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                   WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                     AND a.attgenerated = '' AND (d.adbin IS NOT NULL OR a.attidentity <> '')";
        let rows = self
            .probes
            .query(config, &shard.primary.addr, sql, &[&name])
            .await?;
        let defaults: Vec<ColumnDefault> = rows
            .iter()
            .filter_map(|r| {
                let identity: bool = r.try_get(2).ok()?;
                Some(ColumnDefault {
                    column: r.try_get(0).ok()?,
                    expr: if identity { None } else { r.try_get(1).ok()? },
                    identity,
                })
            })
            .collect();
        let defaults = Arc::new(defaults);
        self.defaults.lock().insert(key, defaults.clone());
        Ok(defaults)
    }

    /// Forgets the cached defaults of `database` (after DDL through usher), and where its
    /// tables' key columns stand.
    pub fn forget_defaults(&self, config: &Config, database: &str) {
        self.defaults.lock().retain(|(db, _), _| db != database);
        if let Some(map) = config
            .databases
            .get(database)
            .and_then(|d| d.sharding.as_ref())
        {
            map.key_positions.clear();
        }
    }

    /// Where `column` stands (0-based) among the columns of `table` in `database`, as
    /// shard 0's catalog lists them (what an INSERT without a column list fills in order);
    /// `None` when the table has no such column.
    pub async fn key_position(
        &self,
        config: &Config,
        database: &str,
        table: &str,
        column: &str,
    ) -> Result<Option<usize>, String> {
        let db = config
            .databases
            .get(database)
            .ok_or_else(|| format!("database {database:?} is no longer configured"))?;
        let shard = db.shards.first().ok_or("a database without shards")?;
        let name = match table.split_once('.') {
            Some((s, t)) => format!("{}.{}", quote_ident(s), quote_ident(t)),
            None => quote_ident(table),
        };
        let sql = "SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                   ORDER BY a.attnum";
        let rows = self
            .probes
            .query(config, &shard.primary.addr, sql, &[&name])
            .await?;
        Ok(rows
            .iter()
            .position(|r| r.try_get::<_, String>(0).is_ok_and(|c| c == column)))
    }
}

/// `s` as an SQL identifier: quoted unless it is lower-case letters, digits and `_`.
fn quote_ident(s: &str) -> String {
    let plain = s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers() {
        assert_eq!(super::quote_ident("children"), "children");
        assert_eq!(super::quote_ident("Kids"), "\"Kids\"");
        assert_eq!(super::quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
