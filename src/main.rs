//! The `usher` command: run the proxy, or check a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A sharding-aware PostgreSQL connection pooler.
#[derive(Parser)]
#[command(name = "usher", version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, short, global = true, default_value = "config/usher.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config file and exit: non-zero with one line per problem; warns when a
    /// shard of a two_phase_commit database has max_prepared_transactions = 0.
    Check,
    /// Apply migrations/NNNN_name.sql in order to every shard primary (re-running is a no-op).
    Migrate {
        /// Only this database (default: every database in the config).
        #[arg(long)]
        database: Option<String>,
        /// Directory of NNNN_name.sql files.
        #[arg(long, default_value = "migrations")]
        dir: PathBuf,
        /// Config user whose server credentials to use (default: health_check_user, else the
        /// first user).
        #[arg(long)]
        user: Option<String>,
    },
    /// Finish the distributed transactions this usher (by `instance_name`) left prepared on
    /// the shards: commit those its two_phase_log decided to commit, roll back the rest. A
    /// running usher does this by itself at start and every 30 s.
    Recover {
        /// Leave parts prepared less than this many seconds ago (they may belong to a
        /// running usher with the same instance_name).
        #[arg(long, default_value_t = 60)]
        older_than: u64,
    },
    /// Print the shard that owns a sharding key, and why.
    ShardOf {
        /// The database (default: the only sharded one).
        #[arg(long)]
        database: Option<String>,
        /// Use this table's key type (when it overrides the database's).
        #[arg(long)]
        table: Option<String>,
        /// The key value, as text (e.g. 42 or a uuid).
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match usher::config::load_file(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!(
                "{}: OK ({} database(s), {} user(s))",
                cli.config.display(),
                config.databases.len(),
                config.users.len()
            );
            // The shards of two-phase databases are asked whether they take prepared
            // transactions: warnings, the file itself being valid.
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                for w in runtime.block_on(usher::tools::check::two_phase_warnings(&config)) {
                    println!("{w}");
                }
            }
            ExitCode::SUCCESS
        }
        Command::Run => run(config, cli.config.clone()),
        Command::Migrate {
            database,
            dir,
            user,
        } => migrate(
            config,
            usher::tools::migrate::Options {
                database,
                dir,
                user,
            },
        ),
        Command::Recover { older_than } => recover(config, older_than),
        Command::ShardOf {
            database,
            table,
            key,
        } => match usher::tools::shard_of::shard_of(
            &config,
            database.as_deref(),
            table.as_deref(),
            &key,
        ) {
            Ok((_, why)) => {
                println!("{why}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("usher shard-of: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn migrate(config: usher::Config, opts: usher::tools::migrate::Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("usher: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    match runtime.block_on(usher::tools::migrate::run(&config, &opts, &mut out)) {
        Ok(n) => {
            println!("usher migrate: done, {n} migration(s) applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("usher migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn recover(config: usher::Config, older_than: u64) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("usher: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let coordinator = usher::twophase::Coordinator::new(&config.general);
    let report = runtime.block_on(usher::twophase::recover::pass(
        &config,
        &coordinator,
        std::time::Duration::from_secs(older_than),
    ));
    for gid in &report.committed {
        println!("committed {gid}");
    }
    for gid in &report.rolled_back {
        println!("rolled back {gid}");
    }
    for why in &report.left {
        println!("left {why}");
    }
    for why in &report.unreachable {
        eprintln!("usher recover: {why}");
    }
    println!(
        "usher recover: instance {}: {} committed, {} rolled back, {} left",
        coordinator.instance(),
        report.committed.len(),
        report.rolled_back.len(),
        report.left.len()
    );
    if report.left.is_empty() && report.unreachable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(config: usher::Config, path: PathBuf) -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("USHER_LOG").unwrap_or_else(|_| "info".into());
    match config.general.log_format {
        usher::config::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        usher::config::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Colour only for a person at a terminal; log files and journald get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.general.worker_threads > 0 {
        builder.worker_threads(config.general.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("usher: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Signal handlers first: a SIGHUP or SIGTERM sent as soon as the ports accept (a
        // service manager's reload right after start) must find them, not the default action
        // that kills the process.
        use tokio::signal::unix::{signal, SignalKind};
        let (hup, term) = match (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(h), Ok(t)) => (h, t),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("usher: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listen = config.general.listen.clone();
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("usher: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(%listen, "usher listening");
        let metrics = match &config.general.metrics_listen {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(listen = %addr, "metrics and health endpoint listening");
                    Some(l)
                }
                Err(e) => {
                    eprintln!("usher: cannot listen on metrics_listen = {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        let log = config.general.two_phase_log.clone();
        let app = usher::App::new(config);
        if let Some(log) = log {
            // Opened now, so an unwritable path stops usher here rather than failing writes.
            if let Err(e) = app.twophase.log(Some(&log)) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        app.set_config_path(path);
        tokio::spawn(reload_on_sighup(app.clone(), hup));
        let serving = tokio::spawn(usher::serve_with(app.clone(), listener, metrics));
        let mut shutdown = app.shutdown_signal();
        tokio::select! {
            _ = shutdown_signal(term) => app.begin_shutdown(),
            _ = shutdown.changed() => {} // admin SHUTDOWN
        }
        let timeout = app.config().general.shutdown_timeout.0;
        let left = app.drain(timeout).await;
        serving.abort();
        if left > 0 {
            tracing::warn!(
                clients = left,
                "shutdown_timeout reached; closing the remaining clients"
            );
        }
        ExitCode::SUCCESS
    })
}

/// SIGHUP re-reads the config file.
async fn reload_on_sighup(app: std::sync::Arc<usher::App>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        let _ = app.reload();
    }
}

async fn shutdown_signal(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
