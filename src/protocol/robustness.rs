//! Randomized robustness checks: every decoder that reads client bytes gets hundreds of
//! thousands of random and mutated inputs and must return (an error or a value), never panic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::KeyType;
use crate::router::shard::values;

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..4) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            1 if !v.is_empty() => {
                let cut = rng.random_range(0..v.len());
                v.truncate(cut);
            }
            2 => v.push(rng.random()),
            _ => {
                let i = rng.random_range(0..=v.len());
                v.insert(i, 0);
            }
        }
    }
    v
}

#[test]
fn decoders_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x05be7);
    let seeds: Vec<Vec<u8>> = vec![
        b"\0\0\0\x17\0\x03\0\0user\0app\0database\0db\0\0".to_vec(),
        b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02".to_vec(),
        b"s1\0SELECT $1\0\0\x01\0\0\0\x17".to_vec(),
        b"portal\0stmt\0\0\x01\0\x01\0\x01\0\0\0\x04abcd\0\0".to_vec(),
        b"Sname\0".to_vec(),
        b"SERROR\0C42P01\0Mmissing\0\0".to_vec(),
    ];
    for i in 0..200_000 {
        let input: Vec<u8> = if i % 2 == 0 {
            let seed = &seeds[rng.random_range(0..seeds.len())];
            mutate(&mut rng, seed)
        } else {
            let len = rng.random_range(0..64);
            (0..len).map(|_| rng.random()).collect()
        };
        // The same entry points the fuzz targets in fuzz/ drive.
        crate::fuzzing::startup_bytes(&input);
        crate::fuzzing::message_bytes(&input);
    }
}

#[test]
fn shard_placement_never_panics() {
    use crate::router::classify::classify;
    use crate::router::shard::place;
    let map = crate::config::Sharding {
        hasher: crate::config::Hasher::Postgres,
        key_type: KeyType::Uuid,
        default_shard: 0,
        tables: vec![crate::config::ShardedTable {
            name: "children".into(),
            column: "family_id".into(),
            key_type: None,
        }],
        global_tables: vec!["lessons".into()],
        two_phase_commit: false,
        two_phase_lock_timeout: crate::config::ConfigDuration::secs(5),
        key_positions: Default::default(),
    };
    let seeds = [
        "SELECT * FROM children c JOIN lessons l ON l.id = c.x WHERE c.family_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "INSERT INTO children (id, family_id) VALUES (1, $1), (2, -5), (3, E'\\x41')",
        "UPDATE children SET family_id = $2 WHERE family_id IN ($1, '1', 2.5)",
        "WITH x AS (DELETE FROM children WHERE family_id = $$z$$ RETURNING *) SELECT * FROM x",
    ];
    let mut rng = StdRng::seed_from_u64(0x5ba2d);
    for i in 0..20_000 {
        let seed = seeds[i % seeds.len()].as_bytes();
        let input = mutate(&mut rng, seed);
        let sql = String::from_utf8_lossy(&input);
        let class = classify(&sql);
        let mut v = values::QueryValues::text(sql.as_bytes());
        let _ = place(&class.shard, &map, 3, &mut v);
    }
}
