//! `host:port/dbname` server addresses as written in the shard map.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// Where a Postgres server listens and which database on it usher uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerAddr {
    /// Host name or IP address (IPv6 in brackets in the text form).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database name on that server.
    pub dbname: String,
}

impl ServerAddr {
    /// Parses `host:port/dbname`; the port defaults to 5432 when omitted.
    pub fn parse(text: &str) -> Result<ServerAddr, String> {
        let bad = |why: &str| {
            format!("invalid server address {text:?}: {why} (expected host:port/dbname)")
        };
        let (hostport, dbname) = text.split_once('/').ok_or_else(|| bad("no /dbname"))?;
        if dbname.is_empty() || dbname.contains('/') {
            return Err(bad("bad database name"));
        }
        let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h, p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))?,
            None => 5432,
        };
        Ok(ServerAddr {
            host: host.to_string(),
            port,
            dbname: dbname.to_string(),
        })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.dbname)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.dbname)
        }
    }
}

impl<'de> Deserialize<'de> for ServerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServerAddr::parse(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let a = ServerAddr::parse("127.0.0.1:5433/app").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.dbname.as_str()),
            ("127.0.0.1", 5433, "app")
        );
        assert_eq!(ServerAddr::parse("db/app").unwrap().port, 5432);
        let v6 = ServerAddr::parse("[::1]:6000/x").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 6000));
        assert_eq!(v6.to_string(), "[::1]:6000/x");
    }

    #[test]
    fn rejects_bad() {
        for bad in [
            "127.0.0.1:5432",
            "127.0.0.1:x/app",
            ":5432/app",
            "h:0/db",
            "h:1/",
        ] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
