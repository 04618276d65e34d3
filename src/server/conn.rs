//! One connection to a PostgreSQL server: connect, log in, and the state usher keeps about it.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ServerError;
use crate::config::ServerAddr;
use crate::protocol::messages::ErrorFields;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The largest message a server may send while logging in (ErrorResponse, ParameterStatus...).
const LOGIN_MAX_MESSAGE: usize = 16 << 20;

/// What usher knows about a server session's state, used to make it match each client's.
#[derive(Debug)]
pub struct ServerState {
    /// Current values of parameters the server reports (ParameterStatus).
    pub reported: BTreeMap<String, String>,
    /// Parameters set away from the connection's defaults, with their values.
    pub applied: BTreeMap<String, String>,
    /// Global names of prepared statements on this server, least recently used first out.
    pub prepared: LruCache<Bytes, ()>,
    /// Statements evicted from `prepared` that still have to be closed on the server.
    pub to_close: Vec<Bytes>,
    /// Which client's unnamed statement the server holds: (client id, generation).
    pub unnamed_owner: Option<(u64, u64)>,
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState::new(200)
    }
}

impl ServerState {
    /// Empty state with room for `max_prepared` statements.
    pub fn new(max_prepared: usize) -> ServerState {
        ServerState {
            reported: BTreeMap::new(),
            applied: BTreeMap::new(),
            prepared: LruCache::new(
                NonZeroUsize::new(max_prepared.max(1)).expect("max(1) is non-zero"),
            ),
            to_close: Vec::new(),
            unnamed_owner: None,
        }
    }

    /// Records that `name` is prepared on the server; an evicted statement is queued for Close.
    pub fn remember_prepared(&mut self, name: Bytes) {
        if let Some((old, ())) = self.prepared.push(name.clone(), ()) {
            if old != name {
                self.to_close.push(old);
            }
        }
    }
}

/// A logged-in server connection.
pub struct ServerConn {
    /// Process-unique id, for logs and SHOW SERVERS.
    pub id: u64,
    /// The server's address.
    pub addr: Arc<ServerAddr>,
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read from the server not yet processed.
    pub rbuf: BytesMut,
    /// Tracked session state.
    pub state: ServerState,
    /// BackendKeyData (pid, secret) for cancel requests.
    pub backend_key: (i32, i32),
    /// When the connection was opened.
    pub created: Instant,
    /// When it was last returned to the pool.
    pub last_used: Instant,
    /// True once something left the session in an unknown state; it must be reset or closed.
    pub dirty: bool,
    /// It went back to the pool at least once: a failure on first use may be a close the
    /// server made while it sat idle, and another connection may well work.
    pub reused: bool,
    /// The last ErrorResponse seen on the control path.
    pub(crate) last_error: Option<ErrorFields>,
}

impl ServerConn {
    /// Connects to `addr` and logs in as `user`, within `timeout`.
    pub async fn connect(
        addr: Arc<ServerAddr>,
        user: &str,
        password: Option<&str>,
        timeout: Duration,
        max_prepared: usize,
    ) -> Result<ServerConn, ServerError> {
        let server = addr.to_string();
        match tokio::time::timeout(
            timeout,
            Self::connect_inner(addr, user, password, max_prepared),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ServerError::ConnectTimeout {
                server,
                after: timeout,
            }),
        }
    }

    async fn connect_inner(
        addr: Arc<ServerAddr>,
        user: &str,
        password: Option<&str>,
        max_prepared: usize,
    ) -> Result<ServerConn, ServerError> {
        let server = addr.to_string();
        let stream = TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .map_err(|source| ServerError::Connect {
                server: server.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut conn = ServerConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addr: addr.clone(),
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            state: ServerState::new(max_prepared),
            backend_key: (0, 0),
            created: Instant::now(),
            last_used: Instant::now(),
            dirty: false,
            reused: false,
            last_error: None,
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [("user", user), ("database", addr.dbname.as_str())],
            &mut out,
        )
        .map_err(|e| conn.protocol(e.to_string()))?;
        conn.write(&out).await?;
        conn.login(user, password).await?;
        Ok(conn)
    }

    async fn login(&mut self, user: &str, password: Option<&str>) -> Result<(), ServerError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.read_message().await?;
            let mut out = BytesMut::new();
            match msg {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let pw = self.need_password(password, user, "a cleartext password")?;
                    frontend::password_message(pw.as_bytes(), &mut out)
                        .map_err(|e| self.protocol(e.to_string()))?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let pw = self.need_password(password, user, "an md5 password")?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|e| self.protocol(e.to_string()))?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = fallible_next(&mut mechanisms) {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(
                            self.unsupported("a SASL mechanism other than SCRAM-SHA-256", "")
                        );
                    }
                    let pw = self.need_password(password, user, "SCRAM-SHA-256")?;
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| self.protocol("unexpected SASLContinue".into()))?;
                    // The client proof costs 4096 PBKDF2 rounds: keep it off the runtime threads.
                    let data = body.data().to_vec();
                    let (s, result) = tokio::task::spawn_blocking(move || {
                        let r = s.update(&data);
                        (s, r)
                    })
                    .await
                    .map_err(|e| self.protocol(format!("SCRAM task failed: {e}")))?;
                    result.map_err(|e| self.protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut out)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("unexpected SASLFinal".into()))?;
                    s.finish(body.data()).map_err(|e| {
                        self.protocol(format!("SCRAM server signature did not verify: {e}"))
                    })?;
                }
                backend::Message::ParameterStatus(body) => {
                    let (name, value) = (
                        body.name().map_err(|e| self.protocol(e.to_string()))?,
                        body.value().map_err(|e| self.protocol(e.to_string()))?,
                    );
                    self.state
                        .reported
                        .insert(name.to_string(), value.to_string());
                }
                backend::Message::BackendKeyData(body) => {
                    self.backend_key = (body.process_id(), body.secret_key());
                }
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(_) => {
                    return Err(ServerError::Login {
                        server: self.addr.to_string(),
                        fields: self.last_error.take().unwrap_or_default(),
                    })
                }
                backend::Message::NoticeResponse(_) => {}
                _ => {
                    return Err(self.unsupported("an authentication method (GSS/SSPI/Kerberos)", ""))
                }
            }
            if !out.is_empty() {
                self.write(&out).await?;
            }
        }
    }

    fn need_password<'a>(
        &self,
        password: Option<&'a str>,
        user: &str,
        method: &str,
    ) -> Result<&'a str, ServerError> {
        password.ok_or_else(|| {
            self.unsupported(
                method,
                &format!(": set server_password (or a plain password) for user {user:?}"),
            )
        })
    }

    /// Reads one message during login with postgres-protocol's decoder (off the hot path).
    async fn read_message(&mut self) -> Result<backend::Message, ServerError> {
        loop {
            match crate::protocol::server::frame_at(&self.rbuf, LOGIN_MAX_MESSAGE) {
                Ok(Some(f)) if f.tag == b'E' => {
                    self.last_error = Some(crate::protocol::server::error_fields(f.body));
                }
                Ok(_) => {}
                Err(e) => return Err(self.protocol(e.to_string())),
            }
            if let Some(msg) =
                backend::Message::parse(&mut self.rbuf).map_err(|e| self.protocol(e.to_string()))?
            {
                return Ok(msg);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into `rbuf`; EOF is an error.
    pub async fn fill(&mut self) -> Result<usize, ServerError> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(self.io("server closed the connection")),
            Ok(n) => Ok(n),
            Err(e) => Err(self.io(&e.to_string())),
        }
    }

    /// Writes all of `bytes` to the server.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| self.io(&e.to_string()))
    }

    /// True when an idle connection was closed by the server or has unexpected bytes waiting
    /// (such as a FATAL sent on shutdown): it must not be handed out again.
    pub fn is_broken(&self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    pub(crate) fn io(&self, reason: &str) -> ServerError {
        ServerError::Io {
            server: self.addr.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn protocol(&self, reason: String) -> ServerError {
        ServerError::Protocol {
            server: self.addr.to_string(),
            reason,
        }
    }

    fn unsupported(&self, method: &str, hint: &str) -> ServerError {
        ServerError::AuthUnsupported {
            server: self.addr.to_string(),
            method: method.to_string(),
            hint: hint.to_string(),
        }
    }
}

fn fallible_next<I: fallible_iterator::FallibleIterator>(it: &mut I) -> Option<I::Item> {
    it.next().ok().flatten()
}
