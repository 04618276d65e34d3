//! Cost of the routing decision: classification from the cache (hit), a full parse with
//! libpg_query (miss), the whole read decision (classify + rule + replica choice), and the
//! shard decision (cached facts + key read from the text or a Bind + hash).
//!
//!   cargo bench --bench routing

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use usher::router::cache::QueryCache;
use usher::router::classify::{classify, RoleHint};
use usher::router::shard::values::{BindParams, QueryValues};
use usher::router::shard::{keys::KeyValue, place, shard_for};
use usher::router::topology::Topology;
use usher::router::{pick_reader, wants_primary};

const QUERY: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;";

fn routing(c: &mut Criterion) {
    let cache = QueryCache::new(10_000);
    cache.classify(&Bytes::from_static(QUERY.as_bytes()));
    let other_literal =
        Bytes::from_static(b"SELECT abalance FROM pgbench_accounts WHERE aid = 17;");
    c.bench_function("classify, cache hit (other literal)", |b| {
        b.iter(|| cache.classify(black_box(&other_literal)))
    });
    c.bench_function("classify, cache miss (libpg_query parse)", |b| {
        b.iter(|| classify(black_box(QUERY)))
    });

    let config = usher::config::load_str(
        "[[users]]\nname = \"a\"\npassword = \"p\"\n[databases.d]\nread_write_split = true\nshards = [ { primary = \"h:1/d\", replicas = [\"h:2/d\", \"h:3/d\"] } ]\n",
        Path::new("bench.toml"),
    )
    .unwrap();
    let topology = Topology::new(&config);
    let shard = &topology.databases["d"][0];
    for s in &shard.servers[1..] {
        s.lag_ms.store(0, Ordering::Relaxed);
        s.lsn.store(1, Ordering::Relaxed);
    }
    let db = &config.databases["d"];
    c.bench_function(
        "route a read (cache hit + rules + least-connections pick)",
        |b| {
            b.iter(|| {
                let class = cache.classify(black_box(&other_literal));
                let primary = wants_primary(db, &class, RoleHint::Auto, false);
                let target = pick_reader("d", db, 0, shard, 0, &[], |i| i);
                black_box((primary, target.unwrap()))
            })
        },
    );
    sharding(c, &cache);
}

fn sharding(c: &mut Criterion, cache: &QueryCache) {
    let config = usher::config::load_str(
        "[[users]]\nname = \"a\"\npassword = \"p\"\n[databases.d]\nshards = [ { primary = \"h:1/a\" }, { primary = \"h:1/b\" }, { primary = \"h:1/c\" }, { primary = \"h:1/d\" } ]\n[databases.d.sharding]\nkey_type = \"uuid\"\ntables = [ { name = \"children\", column = \"family_id\" }, { name = \"user_progress\", column = \"family_id\" } ]\nglobal_tables = [\"lessons\"]\n",
        Path::new("bench.toml"),
    )
    .unwrap();
    let map = config.databases["d"].sharding.clone().unwrap();
    let simple = Bytes::from_static(b"SELECT c.name, p.status FROM children c JOIN user_progress p ON p.family_id = c.family_id AND p.child_id = c.id JOIN lessons l ON l.id = p.lesson_id WHERE c.family_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AND p.status = 'completed'");
    cache.classify(&simple);
    c.bench_function(
        "shard of a statement, literal uuid key (cache hit + extract + hash)",
        |b| {
            b.iter(|| {
                let mut spans = Vec::new();
                let class = cache.classify_with_spans(black_box(&simple), &mut spans);
                let mut values = QueryValues::with_spans(&simple, spans);
                black_box(place(&class.shard, &map, 4, &mut values).unwrap())
            })
        },
    );
    let bound =
        Bytes::from_static(b"SELECT * FROM user_progress WHERE family_id = $1 AND child_id = $2");
    cache.classify(&bound);
    let mut bind = b"\0\0\0\x01\0\x01\0\x02\0\0\0\x10".to_vec();
    bind.extend_from_slice(&[7u8; 16]);
    bind.extend_from_slice(&[0, 0, 0, 16]);
    bind.extend_from_slice(&[9u8; 16]);
    bind.extend_from_slice(&[0, 0]);
    c.bench_function(
        "shard of a statement, binary uuid parameter (cache hit + Bind + hash)",
        |b| {
            b.iter(|| {
                let class = cache.classify(black_box(&bound));
                let mut values =
                    QueryValues::bound(&bound, Vec::new(), BindParams::parse(black_box(&bind)));
                black_box(place(&class.shard, &map, 4, &mut values).unwrap())
            })
        },
    );
    let key = KeyValue::Uuid([7u8; 16]);
    c.bench_function("hash a uuid key (xxh3)", |b| {
        b.iter(|| shard_for(usher::config::Hasher::Xxh3, black_box(&key), 4))
    });
    c.bench_function("hash a uuid key (postgres partition hash)", |b| {
        b.iter(|| shard_for(usher::config::Hasher::Postgres, black_box(&key), 4))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = routing
}
criterion_main!(benches);
