//! One pool: idle connections, a FIFO of waiting clients, and the open-connection count.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{Lease, PoolError, PoolKey, PoolSettings};
use crate::server::ServerConn;

/// What a waiting client is given: a connection, or the right to open one.
enum Grant {
    Conn(Box<ServerConn>),
    Slot,
}

/// Everything behind the pool's one lock. A checkout or a checkin takes it once; nothing
/// on that path allocates or hashes.
struct State {
    /// Shared with checkouts that must wait or open a connection (cloned by reference).
    settings: Arc<PoolSettings>,
    /// Connections are boxed so that handing one over moves a pointer, not the whole struct.
    idle: VecDeque<Box<ServerConn>>,
    /// Connections open, being opened or lent out.
    open: usize,
    /// The connections lent out, as SHOW SERVERS lists them (a pool has tens of connections,
    /// so a linear search beats hashing); its length is the lent count.
    lent_info: Vec<ServerInfo>,
    /// Waiting clients, with when each started waiting.
    waiters: VecDeque<(Instant, oneshot::Sender<Grant>)>,
    /// Queue length at which waiters that gave up are swept out.
    prune_at: usize,
    /// Connections opened before this instant are closed when they come back (RECONNECT).
    reconnect_at: Option<Instant>,
    /// A reload dropped this pool: nothing more is handed out, and connections in use are
    /// closed when they come back.
    removed: bool,
}

impl State {
    /// Records `conn` as lent out since `now`.
    fn lend(&mut self, conn: &ServerConn, now: Instant) {
        self.lent_info.push(ServerInfo {
            id: conn.id,
            pid: conn.backend_key.0,
            opened: conn.created,
            since: now,
            state: "active",
        });
    }

    /// Forgets the lent connection `id` (if it was recorded).
    fn unlend(&mut self, id: u64) {
        if let Some(i) = self.lent_info.iter().position(|l| l.id == id) {
            self.lent_info.swap_remove(i);
        }
    }
}

/// Counts for stats and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Idle connections.
    pub idle: usize,
    /// Connections lent to clients.
    pub active: usize,
    /// Connections open in total (idle + active + being opened).
    pub open: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// Connections being checked with `server_check_query` before use.
    pub tested: usize,
    /// How long the longest-waiting client has waited.
    pub max_wait: Duration,
}

/// One server connection as SHOW SERVERS lists it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// usher's id of the connection.
    pub id: u64,
    /// The server's process id.
    pub pid: i32,
    /// When it was opened.
    pub opened: Instant,
    /// Since when it is in its current state.
    pub since: Instant,
    /// "active" (lent to a client) or "idle".
    pub state: &'static str,
}

/// A pool of connections to one server for one (database, user).
pub struct Pool {
    /// What this pool is for.
    pub key: PoolKey,
    state: Mutex<State>,
    /// Connections opened over the pool's life.
    pub connects: AtomicU64,
    /// Connections being checked before use.
    tested: AtomicU64,
    /// Parameters the server reported at the first login, sent to clients at their login.
    server_params: Mutex<Option<BTreeMap<String, String>>>,
}

impl Pool {
    pub(super) fn new(key: PoolKey, settings: PoolSettings) -> Pool {
        Pool {
            key,
            state: Mutex::new(State {
                settings: Arc::new(settings),
                idle: VecDeque::new(),
                open: 0,
                lent_info: Vec::new(),
                waiters: VecDeque::new(),
                prune_at: 64,
                reconnect_at: None,
                removed: false,
            }),
            connects: AtomicU64::new(0),
            tested: AtomicU64::new(0),
            server_params: Mutex::new(None),
        }
    }

    /// Parameters reported by this pool's server, once one connection was made.
    pub fn server_params(&self) -> Option<BTreeMap<String, String>> {
        self.server_params.lock().clone()
    }

    /// Current settings.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.state.lock().settings.clone()
    }

    /// Current counts.
    pub fn counts(&self) -> PoolCounts {
        let s = self.state.lock();
        let live = || s.waiters.iter().filter(|(_, w)| !w.is_closed());
        PoolCounts {
            idle: s.idle.len(),
            active: s.lent_info.len(),
            open: s.open,
            waiting: live().count(),
            tested: self.tested.load(Ordering::Relaxed) as usize,
            max_wait: live()
                .map(|(since, _)| since.elapsed())
                .max()
                .unwrap_or_default(),
        }
    }

    /// Gets a connection: an idle one, a new one if under the size, or waits in line. A
    /// connection idle longer than `server_check_delay` is first checked with
    /// `server_check_query`; one that fails the check is closed and another one taken.
    pub async fn checkout(self: &Arc<Self>) -> Result<Lease, PoolError> {
        loop {
            let (mut lease, check_delay, now) = self.checkout_unchecked().await?;
            let Some(delay) = check_delay else {
                return Ok(lease);
            };
            let conn = lease.conn();
            if now.saturating_duration_since(conn.last_used) < delay
                || now.saturating_duration_since(conn.created) < delay
            {
                return Ok(lease);
            }
            let settings = self.settings();
            self.tested.fetch_add(1, Ordering::Relaxed);
            let checked = tokio::time::timeout(
                settings.connect_timeout,
                conn.control_query(&settings.check_query),
            )
            .await;
            self.tested.fetch_sub(1, Ordering::Relaxed);
            match checked {
                Ok(Ok(_)) => return Ok(lease),
                Ok(Err(e)) => {
                    tracing::info!(pool = %self.key, error = %e, "idle server connection failed its check; closing it")
                }
                Err(_) => {
                    tracing::info!(pool = %self.key, "idle server connection check timed out; closing it")
                }
            }
            drop(lease);
        }
    }

    /// A connection, the `server_check_delay` in force when it was taken, and when that was.
    async fn checkout_unchecked(
        self: &Arc<Self>,
    ) -> Result<(Lease, Option<Duration>, Instant), PoolError> {
        enum Next {
            Open(Arc<PoolSettings>),
            Wait(Arc<PoolSettings>, oneshot::Receiver<Grant>, Instant),
        }
        let now = Instant::now();
        let next = {
            let mut s = self.state.lock();
            if s.removed {
                return Err(self.removed_error());
            }
            let mut found = None;
            while let Some(conn) = s.idle.pop_back() {
                if Self::reusable(&s.settings, &conn, true, now) {
                    found = Some(conn);
                    break;
                }
                s.open -= 1;
                close(*conn);
            }
            if let Some(conn) = found {
                s.lend(&conn, now);
                let delay = s.settings.check_delay;
                drop(s);
                return Ok((Lease::new(conn, self.clone(), Duration::ZERO), delay, now));
            }
            if s.open < s.settings.size {
                s.open += 1;
                Next::Open(s.settings.clone())
            } else {
                let (tx, rx) = oneshot::channel();
                if s.waiters.len() >= s.prune_at {
                    // Waiters that gave up are skipped when a connection is handed over; this
                    // also sweeps them now and then (amortized: the queue may hold thousands).
                    s.waiters.retain(|(_, w)| !w.is_closed());
                    s.prune_at = (2 * s.waiters.len()).max(64);
                }
                s.waiters.push_back((now, tx));
                Next::Wait(s.settings.clone(), rx, now)
            }
        };
        let (lease, settings) = match next {
            Next::Open(settings) => (self.open_new(&settings, now).await?, settings),
            Next::Wait(settings, rx, started) => {
                (self.wait(rx, &settings, started).await?, settings)
            }
        };
        Ok((lease, settings.check_delay, Instant::now()))
    }

    async fn wait(
        self: &Arc<Self>,
        mut rx: oneshot::Receiver<Grant>,
        settings: &PoolSettings,
        started: Instant,
    ) -> Result<Lease, PoolError> {
        let reserve_at = started + settings.reserve_timeout;
        let give_up_at = settings.wait_timeout.map(|t| started + t);
        let mut reserve_checked = settings.reserve == 0;
        loop {
            let next_timer = match (reserve_checked, give_up_at) {
                (false, Some(g)) => Some(reserve_at.min(g)),
                (false, None) => Some(reserve_at),
                (true, g) => g,
            };
            let grant = match next_timer {
                Some(at) => match tokio::time::timeout_at(at.into(), &mut rx).await {
                    Ok(grant) => grant,
                    Err(_) => {
                        if !reserve_checked && Instant::now() >= reserve_at {
                            reserve_checked = true;
                            if self.take_reserve_slot() {
                                rx.close();
                                if let Ok(grant) = rx.try_recv() {
                                    self.give_back_slot();
                                    return self.accept(grant, settings, started).await;
                                }
                                return self.open_new(settings, started).await;
                            }
                            continue;
                        }
                        rx.close();
                        if let Ok(grant) = rx.try_recv() {
                            return self.accept(grant, settings, started).await;
                        }
                        return Err(PoolError::WaitTimeout {
                            pool: self.key.to_string(),
                            waited: started.elapsed(),
                            size: settings.size,
                        });
                    }
                },
                None => (&mut rx).await,
            };
            match grant {
                Ok(grant) => return self.accept(grant, settings, started).await,
                // The pool drops its waiters only when a reload removed it.
                Err(_) => return Err(self.removed_error()),
            }
        }
    }

    /// What a waiter was granted; `started` is when it began waiting.
    async fn accept(
        self: &Arc<Self>,
        grant: Grant,
        settings: &PoolSettings,
        started: Instant,
    ) -> Result<Lease, PoolError> {
        match grant {
            // Recorded as lent by the checkin that handed it over.
            Grant::Conn(conn) => Ok(Lease::new(conn, self.clone(), started.elapsed())),
            Grant::Slot => self.open_new(settings, started).await,
        }
    }

    fn take_reserve_slot(&self) -> bool {
        let mut s = self.state.lock();
        if s.open < s.settings.size + s.settings.reserve {
            s.open += 1;
            true
        } else {
            false
        }
    }

    /// Opens a connection for a slot already counted in `open`, for a checkout that started
    /// at `started`.
    async fn open_new(
        self: &Arc<Self>,
        settings: &PoolSettings,
        started: Instant,
    ) -> Result<Lease, PoolError> {
        match self.connect(settings).await {
            Ok(conn) => {
                let conn = Box::new(conn);
                self.state.lock().lend(&conn, Instant::now());
                Ok(Lease::new(conn, self.clone(), started.elapsed()))
            }
            Err(e) => {
                self.give_back_slot();
                Err(e.into())
            }
        }
    }

    pub(super) async fn connect(
        &self,
        settings: &PoolSettings,
    ) -> Result<ServerConn, crate::server::ServerError> {
        let conn = ServerConn::connect(
            self.key.server.clone(),
            &settings.server_user,
            settings.server_password.as_deref(),
            settings.connect_timeout,
            settings.max_prepared,
        )
        .await?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.server_params
            .lock()
            .get_or_insert_with(|| conn.state.reported.clone());
        tracing::debug!(pool = %self.key, server_conn = conn.id, "server connection opened");
        Ok(conn)
    }

    /// A slot in `open` is no longer used: pass it to a waiter or drop it.
    fn give_back_slot(&self) {
        let mut s = self.state.lock();
        // A removed pool has no waiters (and takes no new ones).
        while let Some((_, w)) = s.waiters.pop_front() {
            if w.send(Grant::Slot).is_ok() {
                return;
            }
        }
        s.open -= 1;
    }

    /// May `conn` serve another client? `probe_socket` also asks the socket whether the server
    /// closed it while idle (one non-blocking read); a connection coming straight back from a
    /// client has just finished a full exchange and needs only the cheap checks.
    fn reusable(
        settings: &PoolSettings,
        conn: &ServerConn,
        probe_socket: bool,
        now: Instant,
    ) -> bool {
        !conn.dirty
            && conn.rbuf.is_empty()
            && settings
                .lifetime
                .is_none_or(|l| now.saturating_duration_since(conn.created) < l)
            && !(probe_socket && conn.is_broken())
    }

    /// Takes a connection back from a client: straight to the first waiter (it stays lent),
    /// or to the idle list.
    pub(super) fn checkin(&self, mut conn: Box<ServerConn>) {
        let now = Instant::now();
        let mut s = self.state.lock();
        let stale = s.reconnect_at.is_some_and(|t| conn.created <= t);
        if stale || !Self::reusable(&s.settings, &conn, false, now) {
            s.unlend(conn.id);
            drop(s);
            self.discard_counted(*conn);
            return;
        }
        conn.last_used = now;
        conn.reused = true;
        let id = conn.id;
        while let Some((_, w)) = s.waiters.pop_front() {
            match w.send(Grant::Conn(conn)) {
                Ok(()) => {
                    if let Some(l) = s.lent_info.iter_mut().find(|l| l.id == id) {
                        l.since = now;
                    }
                    return;
                }
                Err(Grant::Conn(back)) => conn = back,
                Err(Grant::Slot) => unreachable!("sent a connection"),
            }
        }
        s.unlend(id);
        s.idle.push_back(conn);
    }

    /// Closes a lent connection instead of returning it.
    pub(super) fn discard(&self, conn: Box<ServerConn>) {
        self.state.lock().unlend(conn.id);
        self.discard_counted(*conn);
    }

    fn discard_counted(&self, conn: ServerConn) {
        close(conn);
        self.give_back_slot();
    }

    /// Closes idle connections that are broken, idle too long (above `min`) or too old; returns
    /// how many connections must be opened to get back to `min`.
    pub(super) fn retire_idle(&self, now: Instant) -> usize {
        let mut s = self.state.lock();
        let settings = s.settings.clone();
        let mut keep = VecDeque::with_capacity(s.idle.len());
        let mut closed = 0;
        let open_before = s.open;
        while let Some(conn) = s.idle.pop_front() {
            let too_idle = settings.idle_timeout.is_some_and(|t| {
                now.duration_since(conn.last_used) >= t && open_before - closed > settings.min
            });
            if too_idle || !Self::reusable(&settings, &conn, true, now) {
                closed += 1;
                close(*conn);
            } else {
                keep.push_back(conn);
            }
        }
        s.idle = keep;
        s.open -= closed;
        let missing = settings.min.saturating_sub(s.open);
        s.open += missing;
        missing
    }

    /// Adds a freshly opened connection (for `min_pool_size`), or gives its slot back on failure.
    pub(super) fn add_warm(&self, conn: Result<ServerConn, crate::server::ServerError>) {
        match conn {
            Ok(conn) => {
                let conn = Box::new(conn);
                self.state.lock().lend(&conn, Instant::now());
                self.checkin(conn);
            }
            Err(e) => {
                tracing::warn!(pool = %self.key, error = %e, "could not open a min_pool_size connection");
                self.give_back_slot();
            }
        }
    }

    /// Closes every idle connection now (shutdown, RECONNECT, a server left the config);
    /// returns how many.
    pub fn close_idle(&self) -> usize {
        let mut s = self.state.lock();
        let idle: Vec<Box<ServerConn>> = s.idle.drain(..).collect();
        s.open -= idle.len();
        drop(s);
        let n = idle.len();
        idle.into_iter().for_each(|c| close(*c));
        n
    }

    /// A reload dropped this pool: waiting clients are told at once (they route again with the
    /// new config), later checkouts fail, idle connections close now and lent ones when they
    /// come back.
    pub fn remove(&self) {
        let waiters = {
            let mut s = self.state.lock();
            s.removed = true;
            std::mem::take(&mut s.waiters)
        };
        // Dropping a sender wakes its waiter with an error: `wait` reports Removed.
        drop(waiters);
        self.reconnect();
    }

    fn removed_error(&self) -> PoolError {
        PoolError::Removed {
            database: self.key.database.clone(),
            server: self.key.server.to_string(),
        }
    }

    /// RECONNECT: idle connections are closed now, connections in use when they come back, so
    /// every client gets a fresh connection from its next transaction on.
    pub fn reconnect(&self) {
        self.state.lock().reconnect_at = Some(Instant::now());
        self.close_idle();
    }

    /// Every connection of the pool: lent ones, then idle ones.
    pub fn servers(&self) -> Vec<ServerInfo> {
        let s = self.state.lock();
        let mut out = s.lent_info.clone();
        out.extend(s.idle.iter().map(|c| ServerInfo {
            id: c.id,
            pid: c.backend_key.0,
            opened: c.created,
            since: c.last_used,
            state: "idle",
        }));
        out
    }

    /// Replaces the settings (reload); connections are kept.
    pub fn update_settings(&self, settings: PoolSettings) {
        self.state.lock().settings = Arc::new(settings);
    }

    /// How long the oldest live waiter has waited is not tracked here; this is the idle age of
    /// the least recently used idle connection, for stats.
    pub fn oldest_idle(&self) -> Option<Duration> {
        self.state
            .lock()
            .idle
            .front()
            .map(|c| c.last_used.elapsed())
    }
}

/// Closes a server connection politely (Terminate) without waiting.
fn close(conn: ServerConn) {
    let _ = conn.stream.try_write(crate::protocol::messages::TERMINATE);
    tracing::debug!(server = %conn.addr, server_conn = conn.id, "server connection closed");
}
