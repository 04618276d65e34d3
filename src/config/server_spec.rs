//! A server in the shard map: either `"host:port/db"` or
//! `{ addr = "host:port/db", role = "auto", weight = 2 }`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::ServerAddr;

/// What role a server is configured to have.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoleSpec {
    /// As its position says: the `primary` key is the primary, `replicas` are replicas.
    #[default]
    Positional,
    /// Always the primary.
    Primary,
    /// Always a replica.
    Replica,
    /// Asked with `pg_is_in_recovery()` every `lag_check_interval`; follows promotions.
    Auto,
}

/// A server address with its role and load-balancing weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Where it listens and which database.
    pub addr: ServerAddr,
    /// Configured role.
    pub role: RoleSpec,
    /// Relative share of reads among replicas (default 1; 0 takes no reads).
    pub weight: u32,
}

impl From<ServerAddr> for ServerSpec {
    fn from(addr: ServerAddr) -> Self {
        ServerSpec {
            addr,
            role: RoleSpec::Positional,
            weight: 1,
        }
    }
}

impl<'de> Deserialize<'de> for ServerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ServerSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port/dbname\" or { addr = \"host:port/dbname\", role = \"auto\", weight = 1 }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ServerSpec, E> {
                ServerAddr::parse(v)
                    .map(ServerSpec::from)
                    .map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerSpec, A::Error> {
                let (mut addr, mut role, mut weight) = (None, RoleSpec::Positional, 1u32);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "addr" => {
                            let s: String = map.next_value()?;
                            addr = Some(ServerAddr::parse(&s).map_err(de::Error::custom)?);
                        }
                        "role" => role = map.next_value()?,
                        "weight" => weight = map.next_value()?,
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &["addr", "role", "weight"],
                            ))
                        }
                    }
                }
                let addr = addr.ok_or_else(|| de::Error::missing_field("addr"))?;
                Ok(ServerSpec { addr, role, weight })
            }
        }
        d.deserialize_any(V)
    }
}
