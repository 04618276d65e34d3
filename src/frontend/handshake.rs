//! Startup and authentication of a client: TLS/GSS requests declined, cancel requests
//! forwarded, user and database checked, password verified (SCRAM-SHA-256, md5 or trust), then
//! AuthenticationOk, the server's parameters, a BackendKeyData of usher's own and ReadyForQuery.

use std::collections::BTreeMap;

use bytes::BytesMut;
use rand::RngCore;

use super::cancel::CancelSlot;
use super::{ClientIo, FrontendError};
use crate::app::App;
use crate::auth::{md5_response_matches, AuthError, ScramServer};
use crate::config::{AuthMethod, Config, User};
use crate::protocol::startup::{split_startup, StartupPacket};
use crate::protocol::{client, messages, read_cstr, ProtocolError};

/// A client that logged in.
pub struct Login {
    /// User name.
    pub user: String,
    /// Database name.
    pub database: String,
    /// Session parameters from the startup packet (and `options=-c ...`).
    pub params: BTreeMap<String, String>,
    /// The BackendKeyData usher gave the client.
    pub cancel_key: (i32, i32),
    /// Where the client's current query runs, for cancel requests.
    pub cancel_slot: CancelSlot,
    /// The admin console (database `usher` or `pgbouncer`), not a proxied database.
    pub admin: bool,
}

/// Runs the handshake. `Ok(None)` when the connection was a cancel request (already handled).
pub async fn handshake(
    app: &App,
    io: &mut ClientIo,
    over_limit: bool,
) -> Result<Option<Login>, FrontendError> {
    let (minor, startup) = loop {
        let packet = loop {
            match split_startup(&mut io.rbuf) {
                Ok(Some(p)) => break p,
                Ok(None) => {
                    if io.fill().await? == 0 {
                        return Err(FrontendError::ClosedDuringStartup);
                    }
                }
                Err(e) => {
                    io.fatal("08P01", &format!("invalid startup packet: {e}"))
                        .await;
                    return Err(e.into());
                }
            }
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                if !io.rbuf.is_empty() {
                    io.fatal("08P01", "received unencrypted data after SSL request")
                        .await;
                    return Err(ProtocolError::Violation("data after SSLRequest".into()).into());
                }
                io.send(b"N").await?;
            }
            StartupPacket::Cancel { pid, key } => {
                app.cancels.cancel(pid, key).await;
                return Ok(None);
            }
            StartupPacket::Startup { minor, params } => break (minor, params),
        }
    };
    if over_limit {
        return refuse(
            io,
            "53300",
            "no more connections allowed (max_client_conn)".into(),
        )
        .await;
    }
    let Some(user_name) = StartupPacket::param(&startup, "user").map(str::to_string) else {
        return refuse(
            io,
            "28000",
            "no PostgreSQL user name specified in startup packet".into(),
        )
        .await;
    };
    let database = StartupPacket::param(&startup, "database")
        .unwrap_or(&user_name)
        .to_string();
    let mut params = BTreeMap::new();
    let mut unsupported_options = Vec::new();
    for (k, v) in &startup {
        match k.as_str() {
            "user" | "database" => {}
            "replication" => {
                return refuse(
                    io,
                    "08P01",
                    "replication connections are not supported by usher".into(),
                )
                .await;
            }
            "options" => match parse_options(v) {
                Ok(opts) => params.extend(opts),
                Err(e) => return refuse(io, "08P01", e).await,
            },
            _ if k.starts_with("_pq_.") => unsupported_options.push(k.as_str()),
            _ => {
                params.insert(k.clone(), v.clone());
            }
        }
    }
    if minor > 0 || !unsupported_options.is_empty() {
        let mut out = BytesMut::new();
        messages::negotiate_protocol_version(&mut out, &unsupported_options);
        io.send(&out).await?;
    }
    let config = app.config();
    let admin_db = (database == "usher" || database == "pgbouncer")
        && !config.databases.contains_key(&database);
    if admin_db {
        let Some(admin) = config.admin.as_ref().map(|a| a.as_user()) else {
            return refuse(
                io,
                "3D000",
                format!("database \"{database}\" does not exist (the admin console is disabled: add an [admin] section)"),
            )
            .await;
        };
        if admin.name != user_name {
            return refuse(
                io,
                "28000",
                format!("user \"{user_name}\" may not use the admin console"),
            )
            .await;
        }
        if let Err((code, message)) = authenticated(app, &config, &admin, io).await {
            return refuse(io, code, message).await;
        }
        let reported: Vec<(String, String)> = [
            ("server_version", "16.0 (usher admin console)"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            (
                "application_name",
                params.get("application_name").map_or("", |v| v),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        return welcome(app, io, reported, user_name, database, params, true).await;
    }
    let Some(user) = config.user(&user_name).cloned() else {
        // Same message as a wrong password: do not reveal which users exist.
        return refuse(
            io,
            "28P01",
            format!("password authentication failed for user \"{user_name}\""),
        )
        .await;
    };
    if !config.databases.contains_key(&database) {
        return refuse(
            io,
            "3D000",
            format!("database \"{database}\" does not exist"),
        )
        .await;
    }
    if let Err((code, message)) = authenticated(app, &config, &user, io).await {
        return refuse(io, code, message).await;
    }
    let server_params = match app.server_params(&config, &database, &user).await {
        Ok(p) => p,
        Err(e) => {
            let code = e.sqlstate().to_string();
            return refuse(io, &code, e.to_string()).await;
        }
    };
    let reported: Vec<(String, String)> = server_params
        .into_iter()
        .map(|(k, v)| {
            let v = params.get(&k).cloned().unwrap_or(v);
            (k, v)
        })
        .collect();
    welcome(app, io, reported, user_name, database, params, false).await
}

/// Ends a successful login: AuthenticationOk, the `reported` ParameterStatus messages, a
/// cancel key and ReadyForQuery.
async fn welcome(
    app: &App,
    io: &mut ClientIo,
    reported: Vec<(String, String)>,
    user: String,
    database: String,
    params: BTreeMap<String, String>,
    admin: bool,
) -> Result<Option<Login>, FrontendError> {
    let (cancel_key, cancel_slot) = app.cancels.register();
    let mut out = BytesMut::new();
    messages::auth_ok(&mut out);
    for (k, v) in &reported {
        messages::parameter_status(&mut out, k, v);
    }
    messages::backend_key_data(&mut out, cancel_key.0, cancel_key.1);
    messages::ready_for_query(&mut out, b'I');
    if let Err(e) = io.send(&out).await {
        app.cancels.unregister(cancel_key.0);
        return Err(e.into());
    }
    Ok(Some(Login {
        user,
        database,
        params,
        cancel_key,
        cancel_slot,
        admin,
    }))
}

/// Tells the client why it is refused and ends the handshake.
/// Authenticates `user`; on failure the SQLSTATE and message the client gets.
async fn authenticated(
    app: &App,
    config: &Config,
    user: &User,
    io: &mut ClientIo,
) -> Result<(), (&'static str, String)> {
    match authenticate(app, config, user, io).await {
        Ok(()) => Ok(()),
        Err(AuthError::Failed(u)) => Err((
            "28P01",
            format!("password authentication failed for user \"{u}\""),
        )),
        Err(e @ AuthError::BadExchange(_)) => Err(("08P01", e.to_string())),
        Err(e @ AuthError::BadVerifier(_)) => Err(("XX000", e.to_string())),
    }
}

async fn refuse(
    io: &mut ClientIo,
    code: &str,
    msg: String,
) -> Result<Option<Login>, FrontendError> {
    io.fatal(code, &msg).await;
    Err(FrontendError::Refused(msg))
}

/// Parses `options` (`-c name=value`, `--name=value`, space separated, `\ ` escapes a space).
fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("options: -c needs name=value")?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_string()
        } else {
            return Err(format!(
                "unsupported startup option {w:?}: usher accepts -c name=value"
            ));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("startup option {setting:?} is not name=value"))?;
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

async fn authenticate(
    app: &App,
    config: &Config,
    user: &User,
    io: &mut ClientIo,
) -> Result<(), AuthError> {
    let method = config.auth_method(user);
    let secret = match (method, user.password.as_deref()) {
        (AuthMethod::Trust, _) => return Ok(()),
        (_, Some(s)) => s,
        (_, None) => return Err(AuthError::Failed(user.name.clone())),
    };
    let mut out = BytesMut::new();
    match method {
        AuthMethod::Trust => Ok(()),
        AuthMethod::Md5 => {
            let mut salt = [0u8; 4];
            rand::rng().fill_bytes(&mut salt);
            messages::auth_md5(&mut out, salt);
            send(io, &out).await?;
            let body = password_message(io).await?;
            let (resp, _) = read_cstr(&body, 0, "PasswordMessage").map_err(bad)?;
            if md5_response_matches(secret, &user.name, salt, resp) {
                Ok(())
            } else {
                Err(AuthError::Failed(user.name.clone()))
            }
        }
        AuthMethod::ScramSha256 => {
            let verifier = app.scram_verifier(&user.name, secret).await?;
            messages::auth_sasl(&mut out);
            send(io, &out).await?;
            let body = password_message(io).await?;
            let initial = client::SaslInitial::new(&body).map_err(bad)?;
            if initial.mechanism != b"SCRAM-SHA-256" {
                return Err(AuthError::BadExchange(format!(
                    "unsupported SASL mechanism {:?}",
                    String::from_utf8_lossy(initial.mechanism)
                )));
            }
            let data = initial.data;
            let (server, first) = ScramServer::start((*verifier).clone(), data)?;
            out.clear();
            messages::auth_sasl_data(&mut out, false, first.as_bytes());
            send(io, &out).await?;
            let body = password_message(io).await?;
            let last = server.finish(&body, &user.name)?;
            out.clear();
            messages::auth_sasl_data(&mut out, true, last.as_bytes());
            send(io, &out).await
        }
    }
}

fn bad(e: ProtocolError) -> AuthError {
    AuthError::BadExchange(e.to_string())
}

async fn send(io: &mut ClientIo, bytes: &[u8]) -> Result<(), AuthError> {
    io.send(bytes)
        .await
        .map_err(|e| AuthError::BadExchange(format!("client went away: {e}")))
}

/// Reads the client's next message, which must be a PasswordMessage/SASL response ('p').
async fn password_message(io: &mut ClientIo) -> Result<bytes::Bytes, AuthError> {
    match io.read_frame().await {
        Ok(Some(f)) if f.tag == b'p' => Ok(f.body_bytes()),
        Ok(Some(f)) => Err(AuthError::BadExchange(format!(
            "expected a password message, got message type {:?}",
            f.tag as char
        ))),
        Ok(None) => Err(AuthError::BadExchange(
            "client closed the connection during authentication".into(),
        )),
        Err(e) => Err(AuthError::BadExchange(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_options;

    #[test]
    fn options() {
        let o = parse_options("-c search_path=app -c statement_timeout=5s --work-mem=4MB").unwrap();
        assert_eq!(o[0], ("search_path".into(), "app".into()));
        assert_eq!(o[1], ("statement_timeout".into(), "5s".into()));
        assert_eq!(o[2], ("work_mem".into(), "4MB".into()));
        assert_eq!(parse_options("-c a=b\\ c").unwrap()[0].1, "b c");
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
    }
}
