//! Randomized robustness checks: every decoder that reads client bytes gets hundreds of
//! thousands of random and mutated inputs and must return (an error or a value), never panic.

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{client, messages, server, split_frame, startup, Frame};
use crate::config::KeyType;
use crate::router::shard::{keys, values};
use crate::session::probe_translate;

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
        let _ = startup::split_startup(&mut BytesMut::from(&input[..]));
        let _ = split_frame(&mut BytesMut::from(&input[..]), 1 << 16);
        for tag in *b"QPBDCEfSHcdFXZ" {
            let frame = Frame::new(tag, &input);
            let _ = client::validate(&frame);
            let _ = client::sql_of(&frame);
            if let Ok(p) = client::Parse::new(&frame) {
                let _ = (p.name_span().of(frame.body()), p.owned_query_and_types());
            }
            if let Ok(b) = client::Bind::new(&frame) {
                let _ = (b.statement_span().of(frame.body()), b.rest());
            }
            if let Ok(t) = client::Targeted::new(&frame) {
                let _ = t.name_span().of(frame.body());
            }
            let _ = server::frame_at(&input, 1 << 16);
            let _ = server::ready_status(&input);
            let _ = server::parameter_status(&input);
            let _ = server::command_tag(&input);
            let _ = server::row_description_columns(&input);
        }
        let _ = messages::ErrorFields::parse(&input);
        for tag in [b'P', b'B', b'D', b'C'] {
            probe_translate(tag, &input);
        }
        // Sharding reads bind values and literals out of client bytes.
        let _ = values::BindParams::parse(&input);
        for key_type in [KeyType::Bigint, KeyType::Uuid, KeyType::Text] {
            for oid in [0, 20, 21, 23, 25, 2950, 7] {
                let _ = keys::from_binary(&input, oid, key_type);
            }
            let _ = keys::from_text(&input, key_type);
        }
        let mut spans = Vec::new();
        let _ = crate::router::normalize::cache_key_and_spans(&input, &mut spans);
        for span in &spans {
            let _ = crate::router::normalize::literal_value(&input, span);
        }
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
