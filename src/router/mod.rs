//! The router: decides, per transaction, which shard and which role (primary or replica)
//! serves a client's next message. Today every database has its whole traffic routed to the
//! primary of shard 0; read/write splitting and sharding plug in here.

use crate::config::{Database, ServerAddr};

/// Which server of a database serves a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Shard index in the database's shard list.
    pub shard: usize,
    /// Primary or replica.
    pub role: Role,
}

/// Server role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The read-write server.
    Primary,
    /// A read-only streaming replica.
    Replica,
}

/// Why a statement could not be routed; reported to the client, which may fix and retry.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The database has no server for the target.
    #[error("database {database:?} has no shard {shard}")]
    NoSuchShard {
        /// The database.
        database: String,
        /// The shard asked for.
        shard: usize,
    },
}

impl RouteError {
    /// SQLSTATE to report.
    pub fn sqlstate(&self) -> &str {
        "08006"
    }
}

/// Routes the start of a transaction; `first` is the first message (raw frame) of it.
pub fn route(_db: &Database, _first: &[u8]) -> Target {
    Target {
        shard: 0,
        role: Role::Primary,
    }
}

/// The server address for a target.
pub fn server_for<'a>(
    name: &str,
    db: &'a Database,
    target: Target,
) -> Result<&'a ServerAddr, RouteError> {
    let shard = db
        .shards
        .get(target.shard)
        .ok_or_else(|| RouteError::NoSuchShard {
            database: name.to_string(),
            shard: target.shard,
        })?;
    Ok(match target.role {
        Role::Primary => &shard.primary,
        Role::Replica => shard.replicas.first().unwrap_or(&shard.primary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Shard;

    #[test]
    fn shard_zero_primary() {
        let db = Database {
            shards: vec![Shard {
                primary: ServerAddr::parse("h:1/d").unwrap(),
                replicas: vec![],
            }],
            pool_size: None,
            pool_mode: None,
        };
        let t = route(&db, b"Q");
        assert_eq!(
            t,
            Target {
                shard: 0,
                role: Role::Primary
            }
        );
        assert_eq!(server_for("d", &db, t).unwrap().port, 1);
        assert!(server_for(
            "d",
            &db,
            Target {
                shard: 3,
                role: Role::Primary
            }
        )
        .is_err());
    }
}
