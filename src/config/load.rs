//! Reading and validating a config file, with every problem located by file, line and key.
//!
//! Syntax and type errors come from the TOML deserializer (which stops at the first one);
//! semantic checks (duplicate users, impossible auth combinations, bad addresses, missing
//! servers) all run and are all reported. Locations come from a spanned parse of the same text.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{is_md5_hash, sharding, AuthMethod, Config, RoleSpec};

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line of the offending key or value (0 when unknown).
    pub line: usize,
    /// Dotted key path, e.g. `databases.app.shards[0].primary`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A config that could not be used; `Display` prints one `file:line: key: message` per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {file}: cannot read: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is invalid.
    #[error("{}", render(file, problems))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

fn render(file: &Path, problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}:{}: {}: {}", file.display(), p.line, p.key, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates the config at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    load_str(&text, path)
}

/// Parses and validates config `text`; `file` is only used in messages.
pub fn load_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: file.to_path_buf(),
        problems,
    };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => return Err(invalid(vec![syntax_problem(text, None, &e)])),
    };
    let config: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => return Err(invalid(vec![syntax_problem(text, Some(&doc), &e)])),
    };
    let problems: Vec<ConfigProblem> = validate(&config)
        .into_iter()
        .map(|(path, message)| {
            let span = locate(&doc, &path);
            ConfigProblem {
                line: span.map(|s| line_of(text, s.start)).unwrap_or(0),
                key: render_path(&path),
                message,
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(problems))
    }
}

fn syntax_problem(
    text: &str,
    doc: Option<&Spanned<DeTable>>,
    e: &toml::de::Error,
) -> ConfigProblem {
    let span = e.span();
    let mut line = span.clone().map(|s| line_of(text, s.start)).unwrap_or(0);
    let mut key = String::from("(syntax)");
    if let (Some(doc), Some(span)) = (doc, &span) {
        let mut path = Vec::new();
        key_at(doc, span.start, &mut path);
        if let Some(at) = locate(doc, &path) {
            line = line_of(text, at.start);
        }
        key = if path.is_empty() {
            "(top level)".into()
        } else {
            render_path(&path)
        };
    }
    ConfigProblem {
        line,
        key,
        message: e.message().trim().to_string(),
    }
}

/// A step in a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

fn k(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Span of the deepest element of `path` present in the document (the key itself when possible).
fn locate(doc: &Spanned<DeTable>, path: &[Seg]) -> Option<Range<usize>> {
    let mut best = None;
    let mut table = Some(doc.get_ref());
    let mut array: Option<&[Spanned<DeValue>]> = None;
    for seg in path {
        let value = match (seg, table, array) {
            (Seg::Key(key), Some(t), _) => {
                let (kspan, v) = t
                    .iter()
                    .find(|(kk, _)| kk.get_ref().as_ref() == key.as_str())?;
                best = Some(kspan.span());
                v
            }
            (Seg::Index(i), _, Some(a)) => {
                let v = a.get(*i)?;
                best = Some(v.span());
                v
            }
            _ => break,
        };
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
        if best.is_none() {
            best = Some(value.span());
        }
    }
    best
}

/// Fills `path` with the deepest key whose value covers `offset`.
fn key_at(doc: &Spanned<DeTable>, offset: usize, path: &mut Vec<Seg>) {
    fn walk_value(v: &Spanned<DeValue>, offset: usize, path: &mut Vec<Seg>) {
        match v.get_ref() {
            DeValue::Table(t) => walk_table(t, offset, path),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    if item.span().contains(&offset) {
                        path.push(Seg::Index(i));
                        walk_value(item, offset, path);
                        return;
                    }
                }
            }
            _ => {}
        }
    }
    fn walk_table(t: &DeTable, offset: usize, path: &mut Vec<Seg>) {
        for (key, v) in t.iter() {
            let covers = v.span().contains(&offset) || key.span().contains(&offset);
            if covers {
                path.push(Seg::Key(key.get_ref().to_string()));
                walk_value(v, offset, path);
                return;
            }
        }
        // Tables written as [headers] have value spans that may not cover their body; take the
        // last key that starts before the offset.
        if let Some((key, v)) = t
            .iter()
            .filter(|(key, _)| key.span().start <= offset)
            .max_by_key(|(key, _)| key.span().start)
        {
            if matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
                path.push(Seg::Key(key.get_ref().to_string()));
                walk_value(v, offset, path);
            }
        }
    }
    walk_table(doc.get_ref(), offset, path);
}

/// Semantic checks; returns (key path, message) for every problem.
fn validate(c: &Config) -> Vec<(Vec<Seg>, String)> {
    let mut out = Vec::new();
    let g = &c.general;
    if let Some(m) = &g.metrics_listen {
        if m.parse::<SocketAddr>().is_err() {
            out.push((
                vec![k("general"), k("metrics_listen")],
                format!("invalid metrics_listen address {m:?}: expected ip:port"),
            ));
        } else if *m == g.listen {
            out.push((
                vec![k("general"), k("metrics_listen")],
                "metrics_listen must differ from listen".into(),
            ));
        }
    }
    if let Some(name) = &g.instance_name {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            out.push((
                vec![k("general"), k("instance_name")],
                format!("instance_name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.' (it names this usher in prepared transaction ids)"),
            ));
        }
    }
    if g.listen.parse::<SocketAddr>().is_err() {
        out.push((
            vec![k("general"), k("listen")],
            format!("invalid listen address {:?}: expected ip:port", g.listen),
        ));
    }
    for (key, value) in [
        ("default_pool_size", g.default_pool_size),
        ("max_client_conn", g.max_client_conn),
        ("max_message_size", g.max_message_size),
    ] {
        if value == 0 {
            out.push((vec![k("general"), k(key)], "must be at least 1".into()));
        }
    }
    if g.min_pool_size > g.default_pool_size {
        out.push((
            vec![k("general"), k("min_pool_size")],
            format!(
                "min_pool_size {} is larger than default_pool_size {}",
                g.min_pool_size, g.default_pool_size
            ),
        ));
    }
    if let Some(u) = &g.health_check_user {
        if c.user(u).is_none() {
            out.push((
                vec![k("general"), k("health_check_user")],
                format!("no [[users]] entry named {u:?}"),
            ));
        }
    }
    if g.lag_check_interval.0.is_zero() {
        out.push((
            vec![k("general"), k("lag_check_interval")],
            "must be greater than zero".into(),
        ));
    }
    if g.query_cache_size == 0 {
        out.push((
            vec![k("general"), k("query_cache_size")],
            "must be at least 1".into(),
        ));
    }
    if c.users.is_empty() {
        out.push((
            vec![k("users")],
            "no [[users]] defined: nobody could log in".into(),
        ));
    }
    for (i, u) in c.users.iter().enumerate() {
        let at = |key: &str| vec![k("users"), Seg::Index(i), k(key)];
        if u.name.is_empty() {
            out.push((at("name"), "user name must not be empty".into()));
        }
        if let Some(first) = c.users.iter().position(|o| o.name == u.name) {
            if first < i {
                out.push((
                    at("name"),
                    format!(
                        "duplicate user {:?} (first defined as users[{first}])",
                        u.name
                    ),
                ));
            }
        }
        if u.pool_size == Some(0) {
            out.push((at("pool_size"), "must be at least 1".into()));
        }
        let method = c.auth_method(u);
        match (method, u.password.as_deref()) {
            (AuthMethod::Trust, _) => {}
            (_, None) => out.push((
                at("password"),
                format!("user {:?} needs a password for {method:?} authentication (or auth_type = \"trust\")", u.name),
            )),
            (AuthMethod::Md5, Some(p)) if p.starts_with("SCRAM-SHA-256$") => out.push((
                at("auth_type"),
                "md5 authentication cannot use a SCRAM verifier: give the plain password or its md5 hash".into(),
            )),
            (AuthMethod::ScramSha256, Some(p)) if is_md5_hash(p) => out.push((
                at("password"),
                "SCRAM authentication cannot use an md5 hash: give the plain password or a SCRAM-SHA-256 verifier".into(),
            )),
            (_, Some(p)) if p.starts_with("SCRAM-SHA-256$") => {
                if let Err(e) = crate::auth::ScramVerifier::parse(p) {
                    out.push((at("password"), e.to_string()));
                }
            }
            _ => {}
        }
    }
    if let Some(admin) = &c.admin {
        if admin.password.is_none() && c.auth_method(&admin.as_user()) != AuthMethod::Trust {
            out.push((
                vec![k("admin"), k("password")],
                "the admin console needs a password (or auth_type = \"trust\")".into(),
            ));
        }
        if c.databases.contains_key("usher") || c.databases.contains_key("pgbouncer") {
            out.push((
                vec![k("admin")],
                "a database named \"usher\" or \"pgbouncer\" hides the admin console; rename it"
                    .into(),
            ));
        }
    }
    if c.databases.is_empty() {
        out.push((
            vec![k("databases")],
            "no [databases.NAME] defined: nothing to connect to".into(),
        ));
    }
    for (name, db) in &c.databases {
        let at = |rest: &[Seg]| {
            let mut p = vec![k("databases"), k(name)];
            p.extend_from_slice(rest);
            p
        };
        if db.shards.is_empty() {
            out.push((at(&[k("shards")]), format!("database {name:?} has no shards: give at least one {{ primary = \"host:port/db\" }}")));
        }
        if db.pool_size == Some(0) {
            out.push((at(&[k("pool_size")]), "must be at least 1".into()));
        }
        if let Some(sharding) = &db.sharding {
            for (path, message) in sharding::problems(sharding, db.shards.len()) {
                let mut p = at(&[k("sharding")]);
                for part in path {
                    match part.split_once('[') {
                        Some((key, idx)) => {
                            p.push(k(key));
                            p.push(Seg::Index(idx.trim_end_matches(']').parse().unwrap_or(0)));
                        }
                        None => p.push(k(&part)),
                    }
                }
                out.push((p, message));
            }
            if sharding.two_phase_commit && g.two_phase_log.is_none() {
                out.push((at(&[k("sharding"), k("two_phase_commit")]), "two_phase_commit = true needs general.two_phase_log: the file where usher records commit decisions before it commits".into()));
            }
        } else if db.shards.len() > 1 {
            out.push((at(&[k("shards")]), format!("database {name:?} has {} shards but no [databases.{name}.sharding] section: usher would not know which shard holds a row", db.shards.len())));
        }
        for (i, shard) in db.shards.iter().enumerate() {
            if shard.primary.role == RoleSpec::Replica {
                out.push((
                    at(&[k("shards"), Seg::Index(i), k("primary")]),
                    "the primary cannot have role = \"replica\" (use \"auto\" to discover it)"
                        .into(),
                ));
            }
            for (j, r) in shard.replicas.iter().enumerate() {
                if r.role == RoleSpec::Primary {
                    out.push((
                        at(&[k("shards"), Seg::Index(i), k("replicas"), Seg::Index(j)]),
                        "a replica cannot have role = \"primary\" (use \"auto\" to follow promotions)".into(),
                    ));
                }
                if r.addr == shard.primary.addr
                    || shard.replicas[..j].iter().any(|o| o.addr == r.addr)
                {
                    out.push((
                        at(&[k("shards"), Seg::Index(i), k("replicas"), Seg::Index(j)]),
                        format!("server {} is listed twice in shard {i}", r.addr),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<ConfigProblem> {
        match load_str(text, Path::new("u.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    const GOOD: &str = r#"
[general]
listen = "127.0.0.1:6432"
pool_mode = "transaction"
default_pool_size = 25
reserve_pool_timeout = "5s"

[[users]]
name = "app"
password = "secret"

[databases.app]
shards = [
  { primary = "127.0.0.1:5432/app", replicas = [] },
]
"#;

    #[test]
    fn good_config_loads() {
        let c = load_str(GOOD, Path::new("u.toml")).unwrap();
        assert_eq!(c.general.default_pool_size, 25);
        assert_eq!(c.databases["app"].shards[0].primary.addr.port, 5432);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let p =
            problems(&GOOD.replace("pool_mode = \"transaction\"", "pool_mood = \"transaction\""));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 4);
        assert!(p[0].message.contains("unknown field `pool_mood`"), "{p:?}");
    }

    #[test]
    fn bad_duration_and_type() {
        let p = problems(&GOOD.replace("\"5s\"", "\"5 parsecs\""));
        assert_eq!(
            (p[0].line, p[0].key.as_str()),
            (6, "general.reserve_pool_timeout"),
            "{p:?}"
        );
        let p = problems(&GOOD.replace("= 25", "= \"many\""));
        assert_eq!(
            (p[0].line, p[0].key.as_str()),
            (5, "general.default_pool_size"),
            "{p:?}"
        );
    }

    #[test]
    fn semantic_problems_all_reported() {
        let text = GOOD.replace(
            "[databases.app]",
            "[[users]]\nname = \"app\"\npassword = \"x\"\n\n[databases.other]\nshards = []\n\n[databases.app]",
        );
        let p = problems(&text);
        assert!(
            p.iter().any(|p| p.key == "users[1].name"
                && p.message.contains("duplicate")
                && p.line == 13),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.key == "databases.other.shards"
                && p.message.contains("no shards")
                && p.line == 17),
            "{p:?}"
        );
    }

    #[test]
    fn bad_server_address() {
        let p = problems(&GOOD.replace("127.0.0.1:5432/app", "127.0.0.1:5432"));
        assert_eq!(p[0].line, 14, "{p:?}");
        assert!(p[0].key.starts_with("databases.app.shards"), "{p:?}");
        assert!(p[0].message.contains("host:port/dbname"), "{p:?}");
    }

    #[test]
    fn two_phase_commit_needs_its_log_and_a_fitting_instance_name() {
        let sharded = GOOD.replace(
            "replicas = [] },\n]",
            "replicas = [] },\n]\n[databases.app.sharding]\ntwo_phase_commit = true\ntables = [ { name = \"t\", column = \"id\" } ]",
        );
        let p = problems(&sharded);
        assert!(
            p.iter()
                .any(|p| p.key == "databases.app.sharding.two_phase_commit"
                    && p.message.contains("general.two_phase_log")),
            "{p:?}"
        );
        let p = problems(&sharded.replace(
            "default_pool_size = 25",
            "default_pool_size = 25\ntwo_phase_log = \"/var/lib/usher/2pc.log\"\ninstance_name = \"a:b\"",
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "general.instance_name", "{p:?}");
        let fine = sharded.replace(
            "default_pool_size = 25",
            "default_pool_size = 25\ntwo_phase_log = \"/var/lib/usher/2pc.log\"",
        );
        assert!(load_str(&fine, Path::new("u.toml")).is_ok());
    }
}
