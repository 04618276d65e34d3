//! A whole usher fed arbitrary client bytes after a good login, against the scripted fake
//! server (tests/common/fake_server.rs answering as Postgres would). The first input byte
//! picks the database: transaction mode, session mode, read/write split, or sharded over two
//! shards. Any panic (in any task) aborts the process, which libFuzzer reports; so does a
//! usher that stops letting the next client log in. A client left waiting on an incomplete
//! message is not a hang: that is the protocol.
#![no_main]

#[path = "../../tests/common/fake_server.rs"]
mod fake_server;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct World {
    rt: tokio::runtime::Runtime,
    port: u16,
}

const DATABASES: [&str; 4] = ["fake", "fake_session", "fake_split", "fake_sharded"];

fn config(fake: u16) -> String {
    let server =
        |db: &str, role: &str| format!("{{ addr = \"127.0.0.1:{fake}/{db}\", role = \"{role}\" }}");
    format!(
        "{}
[databases.fake_session]
pool_mode = \"session\"
shards = [ {{ primary = {} }} ]

[databases.fake_split]
read_write_split = true
max_replica_lag = \"0\"
shards = [ {{ primary = {}, replicas = [ {} ] }} ]

[databases.fake_sharded]
shards = [ {{ primary = {} }}, {{ primary = {} }} ]

[databases.fake_sharded.sharding]
key_type = \"bigint\"
tables = [ {{ name = \"items\", column = \"family_no\" }} ]
global_tables = [\"lessons\"]
",
        fake_server::config(
            fake,
            "max_client_conn = 100000\nlag_check_interval = \"1s\""
        ),
        server("s", "primary"),
        server("p", "primary"),
        server("r", "replica"),
        server("a", "primary"),
        server("b", "primary"),
    )
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::abort();
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let port = rt.block_on(async {
            let fake =
                fake_server::FakeServer::start(Arc::new(|_, t, b| fake_server::generic(t, b)))
                    .await;
            let text = config(fake.port);
            let config = usher::config::load_str(&text, std::path::Path::new("fuzz.toml"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(usher::serve_with(usher::App::new(config), listener, None));
            std::mem::forget(fake);
            port
        });
        World { rt, port }
    })
}

/// Logs in; aborts (a finding) when usher does not get to ReadyForQuery within 5 s.
async fn login(port: u16, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&fake_server::startup_packet("u", db))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    assert!(
        matches!(done, Ok(true)),
        "usher stopped logging clients in: {got:?}"
    );
    s
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let w = world();
    w.rt.block_on(async {
        let db = DATABASES[pick as usize % DATABASES.len()];
        let mut s = login(w.port, db).await;
        let _ = s.write_all(bytes).await;
        // Take what usher answers until it is quiet (or closes), then leave.
        let mut buf = [0u8; 65536];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
        }
    });
});
