//! Shared test harness: real PostgreSQL servers (initdb + pg_ctl in a temp dir, as the
//! `postgres` OS user when running as root) on free loopback ports, a streaming replica made
//! with pg_basebackup -R, per-test databases, and usher started in-process on a free port.
//!
//! One topology is shared by all tests of a test binary. A reaper process watches the test
//! process and stops the servers and deletes the directory when it exits, however it exits.
#![allow(dead_code)]

pub mod fake_server;
pub mod learning;
pub mod sharded;
pub mod wire;
use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

/// Password of every test role that has one.
pub const PASSWORD: &str = "secret";

/// A running Postgres server.
pub struct Pg {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    pub data: PathBuf,
    /// Directory of its unix socket.
    pub socket_dir: PathBuf,
}

/// The shared topology: a primary and (on demand) a streaming replica.
pub struct Topology {
    /// Temp dir holding everything.
    pub root: PathBuf,
    /// The primary.
    pub primary: Pg,
    replica: OnceLock<Pg>,
    replica2: OnceLock<Pg>,
    delayed: OnceLock<Pg>,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql); or set PG_BIN")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

fn pg_user_ids() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root needs the 'postgres' OS user (apt-get install postgresql)"
    );
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// A Postgres binary as the user that may run it.
fn pg_command(program: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join(program));
    if let Some((uid, gid)) = pg_user_ids() {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn chown_to_pg(path: &Path) {
    if let Some((uid, gid)) = pg_user_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const HBA: &str = "\
local all all trust
host replication all 127.0.0.1/32 trust
host all postgres 127.0.0.1/32 trust
host all trust_user 127.0.0.1/32 trust
host all md5_user 127.0.0.1/32 md5
host all plain_user 127.0.0.1/32 password
host all all 127.0.0.1/32 scram-sha-256
";

impl Pg {
    fn start(data: PathBuf, socket_dir: PathBuf, extra_conf: &str) -> Pg {
        for attempt in 0..5 {
            let port = free_port();
            let conf = format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 400\n\
                 shared_buffers = 64MB\nmax_prepared_transactions = 50\nwal_level = replica\nmax_wal_senders = 8\nhot_standby = on\nwal_keep_size = '1GB'\n\
                 log_min_messages = warning\nshared_preload_libraries = 'pg_stat_statements'\n{extra_conf}\n",
                socket_dir.display()
            );
            // Append: later settings win, and pg_basebackup -R put primary_conninfo here.
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(data.join("postgresql.auto.conf"))
                .and_then(|mut f| f.write_all(conf.as_bytes()))
                .unwrap();
            chown_to_pg(&data.join("postgresql.auto.conf"));
            let log = data.parent().unwrap().join(format!(
                "{}.log",
                data.file_name().unwrap().to_string_lossy()
            ));
            let status = pg_command("pg_ctl")
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success() {
                return Pg {
                    port,
                    data,
                    socket_dir,
                };
            }
            eprintln!(
                "postgres did not start on port {port} (attempt {attempt}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("could not start postgres in {}", data.display());
    }

    /// Runs SQL as the superuser with psql and returns stdout (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(
            Command::new(bin_dir().join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                ])
                .args(["-p", &self.port.to_string(), "-d", db, "-c", sql]),
            &format!("psql {sql}"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server (fast mode).
    pub fn stop(&self) {
        run(
            pg_command("pg_ctl").args([
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ]),
            "pg_ctl stop",
        );
    }

    /// Stops the server immediately (as a crash would).
    pub fn kill(&self) {
        run(
            pg_command("pg_ctl").args([
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]),
            "pg_ctl stop -m immediate",
        );
    }

    /// Promotes a replica to primary.
    pub fn promote(&self) {
        run(
            pg_command("pg_ctl").args(["-D", self.data.to_str().unwrap(), "-w", "promote"]),
            "pg_ctl promote",
        );
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let log = self.data.parent().unwrap().join("restart.log");
        run(
            pg_command("pg_ctl").args([
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ]),
            "pg_ctl start",
        );
    }
}

impl Topology {
    /// The streaming replica of the primary, created on first use.
    pub fn replica(&self) -> &Pg {
        self.replica
            .get_or_init(|| self.make_replica("replica", ""))
    }

    /// A second streaming replica.
    pub fn replica2(&self) -> &Pg {
        self.replica2
            .get_or_init(|| self.make_replica("replica2", ""))
    }

    /// A replica that applies WAL 2 s late (`recovery_min_apply_delay`).
    pub fn delayed_replica(&self) -> &Pg {
        self.delayed
            .get_or_init(|| self.make_replica("delayed", "recovery_min_apply_delay = '2s'"))
    }

    /// Makes a streaming replica with pg_basebackup -R into `root/name`.
    pub fn make_replica(&self, name: &str, extra_conf: &str) -> Pg {
        let data = self.root.join(name);
        run(
            pg_command("pg_basebackup").args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]),
            "pg_basebackup",
        );
        let pg = Pg::start(data, self.root.clone(), extra_conf);
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg.psql("postgres", "SELECT pg_is_in_recovery()") != "t" {
            assert!(Instant::now() < deadline, "replica never entered recovery");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// Waits until every replica made so far has replayed everything the primary has.
    pub fn wait_replicas_caught_up(&self) {
        let target = self
            .primary
            .psql("postgres", "SELECT pg_current_wal_insert_lsn()");
        for r in [self.replica.get(), self.replica2.get()]
            .into_iter()
            .flatten()
        {
            let deadline = Instant::now() + Duration::from_secs(30);
            while r.psql(
                "postgres",
                &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'"),
            ) != "t"
            {
                assert!(Instant::now() < deadline, "replica did not catch up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Creates pgbench's tables (scale 2) in `db` on the primary, usable by `app`.
    pub fn pgbench_init(&self, db: &str) {
        let init = Command::new(bin_dir().join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                "2",
                "-h",
                "127.0.0.1",
                "-p",
                &self.primary.port.to_string(),
                "-U",
                "postgres",
                db,
            ])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        self.primary
            .psql(db, "GRANT ALL ON ALL TABLES IN SCHEMA public TO app");
    }

    /// Creates a fresh database owned by `app` on the primary and returns its name.
    pub fn create_db(&self, prefix: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.primary
            .psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
        name
    }
}

/// The topology shared by this test binary.
pub fn topology() -> &'static Topology {
    static TOPOLOGY: OnceLock<Topology> = OnceLock::new();
    TOPOLOGY.get_or_init(|| {
        let root = tempfile::Builder::new().prefix("usher-test-").tempdir_in("/tmp").unwrap().keep();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        chown_to_pg(&root);
        spawn_reaper(&root);
        let data = root.join("primary");
        run(
            pg_command("initdb").args(["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
            "initdb",
        );
        std::fs::write(data.join("pg_hba.conf"), HBA).unwrap();
        let primary = Pg::start(data, root.clone(), "");
        primary.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN CREATEDB PASSWORD '{PASSWORD}'; \
                 CREATE ROLE plain_user LOGIN PASSWORD '{PASSWORD}'; CREATE ROLE trust_user LOGIN; \
                 SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD '{PASSWORD}';"
            ),
        );
        Topology {
            root,
            primary,
            replica: OnceLock::new(),
            replica2: OnceLock::new(),
            delayed: OnceLock::new(),
        }
    })
}

/// Stops every server under `root` and removes it once this process exits.
#[allow(clippy::zombie_processes)] // the reaper must outlive this process; init reaps it
fn spawn_reaper(root: &Path) {
    let pid = std::process::id();
    let pg_ctl = bin_dir().join("pg_ctl");
    let as_pg = if pg_user_ids().is_some() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         for d in {root}/*/; do [ -f \"$d/PG_VERSION\" ] && {as_pg}{pg_ctl} -D \"$d\" -m immediate stop >/dev/null 2>&1; done; \
         rm -rf {root}",
        root = root.display(),
        pg_ctl = pg_ctl.display(),
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().expect("spawn reaper");
}

/// usher running in-process.
pub struct Usher {
    /// Port clients connect to.
    pub port: u16,
    /// Port of the HTTP endpoint (/metrics, /health, /ready, /pools).
    pub metrics_port: u16,
    /// Its state (pools, counters).
    pub app: Arc<usher::App>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Usher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config for `databases` (name -> server database on the primary) with pool size `pool`.
pub fn config(db: &str, general_extra: &str) -> String {
    let t = topology();
    format!(
        r#"
[general]
listen = "127.0.0.1:0"
{general_extra}

[[users]]
name = "app"
password = "{PASSWORD}"

[[users]]
name = "md5_user"
password = "{PASSWORD}"
auth_type = "md5"

[[users]]
name = "trust_user"
auth_type = "trust"

[[users]]
name = "plain_user"
password = "{PASSWORD}"

[databases.{db}]
shards = [ {{ primary = "127.0.0.1:{port}/{db}" }} ]
"#,
        port = t.primary.port
    )
}

/// A config for `db` on the primary with `replicas` (ports) and extra `[databases.db]` keys.
pub fn split_config(db: &str, replicas: &[u16], general_extra: &str, db_extra: &str) -> String {
    let t = topology();
    let reps: Vec<String> = replicas
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}/{db}\""))
        .collect();
    config(db, general_extra).replace(
        &format!("[databases.{db}]\nshards = [ {{ primary = \"127.0.0.1:{port}/{db}\" }} ]", port = t.primary.port),
        &format!(
            "[databases.{db}]\nread_write_split = true\n{db_extra}\nshards = [ {{ primary = \"127.0.0.1:{port}/{db}\", replicas = [{}] }} ]",
            reps.join(", "),
            port = t.primary.port
        ),
    )
}

/// `n` fresh databases on the primary, one per shard.
pub fn shard_dbs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| topology().create_db(prefix)).collect()
}

/// A config whose database `db` is split over the primary databases `shards`, with the
/// `[databases.db.sharding]` body `sharding`.
pub fn sharded_config(db: &str, shards: &[String], sharding: &str) -> String {
    let t = topology();
    let list: Vec<String> = shards
        .iter()
        .map(|s| format!("{{ primary = \"127.0.0.1:{}/{s}\" }}", t.primary.port))
        .collect();
    let base = config(db, "");
    let old = format!(
        "[databases.{db}]\nshards = [ {{ primary = \"127.0.0.1:{port}/{db}\" }} ]",
        port = t.primary.port
    );
    assert!(base.contains(&old));
    base.replace(
        &old,
        &format!(
            "[databases.{db}]\nshards = [ {} ]\n\n[databases.{db}.sharding]\n{sharding}",
            list.join(", ")
        ),
    )
}

/// Runs `usher migrate` (the library entry point) with the repository's migrations/ on every
/// shard of `config_text`; returns the progress output.
pub async fn migrate(config_text: &str, dir: &str) -> Result<String, String> {
    let config =
        usher::config::load_str(config_text, Path::new("test.toml")).map_err(|e| e.to_string())?;
    let opts = usher::tools::migrate::Options {
        database: None,
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir),
        user: None,
    };
    let mut out = Vec::new();
    let result = usher::tools::migrate::run(&config, &opts, &mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    result
        .map(|_| text.clone())
        .map_err(|e| format!("{e}\n{text}"))
}

/// Starts usher with config text.
pub async fn start_usher(config_text: &str) -> Usher {
    static TRACING: std::sync::Once = std::sync::Once::new();
    TRACING.call_once(|| {
        let filter = std::env::var("USHER_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
    let config = usher::config::load_str(config_text, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_port = metrics.local_addr().unwrap().port();
    let app = usher::App::new(config);
    let task = tokio::spawn(usher::serve_with(app.clone(), listener, Some(metrics)));
    Usher {
        port,
        metrics_port,
        app,
        task,
    }
}

/// `GET path` on usher's HTTP endpoint: (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the Prometheus sample `name{...}` whose labels include every `labels` pair
/// (`k="v"`), summed over matching series; 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|p| rest.contains(p)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Connection string for usher.
pub fn dsn(port: u16, user: &str, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} password={PASSWORD} dbname={db} application_name=usher_test")
}

/// Connects with tokio-postgres and drives the connection in a task.
pub async fn connect(
    port: u16,
    user: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_dsn(&dsn(port, user, db)).await
}

/// Connects with a full connection string.
pub async fn connect_dsn(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Path of a Postgres client binary (psql, pgbench).
pub fn pg_bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

pub use fake_server::startup_packet;

/// Opens a raw connection and logs in as a trust user, up to the first ReadyForQuery.
pub async fn raw_login(port: u16, user: &str, db: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&startup_packet(user, db)).await.unwrap();
    read_until_ready(&mut s, 1).await;
    s
}

/// Reads a raw connection until `n` idle ReadyForQuery frames arrived (5 s at most per read);
/// returns every byte read.
pub async fn read_until_ready(s: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while got
        .windows(6)
        .filter(|w| *w == [b'Z', 0, 0, 0, 5, b'I'])
        .count()
        < n
    {
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(r > 0, "closed before {n} ReadyForQuery: {got:?}");
        got.extend_from_slice(&buf[..r]);
    }
    got
}
