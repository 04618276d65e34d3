//! The column defaults of tables that INSERTs split across shards write: read from the
//! catalog of shard 0's primary once per table, cached, and forgotten when DDL runs through
//! usher (or a reload), so a changed default is read again.

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

    /// Forgets the cached defaults of `database` (after DDL through usher).
    pub fn forget_defaults(&self, database: &str) {
        self.defaults.lock().retain(|(db, _), _| db != database);
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
