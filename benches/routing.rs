//! Cost of the routing decision: classification from the cache (hit), a full parse with
//! libpg_query (miss), and the whole read decision (classify + rule + replica choice).
//!
//!   cargo bench --bench routing

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use usher::router::cache::QueryCache;
use usher::router::classify::{classify, RoleHint};
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
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = routing
}
criterion_main!(benches);
