//! Key hashing: a canonical key value to a shard number. `xxh3` hashes the canonical bytes;
//! `postgres` reproduces what PostgreSQL's `PARTITION BY HASH` computes for the key's type
//! (Bob Jenkins' lookup3 as in `src/common/hashfn.c`, seeded with the partition seed and
//! combined the way `compute_partition_hash_value` does), so shard `i` of `n` holds exactly the
//! rows of partition `FOR VALUES WITH (MODULUS n, REMAINDER i)`.

use crate::config::Hasher;

use super::keys::KeyValue;

/// PostgreSQL's `HASH_PARTITION_SEED`.
const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// The shard (`0..shards`) that owns `key`.
pub fn shard_for(hasher: Hasher, key: &KeyValue, shards: usize) -> usize {
    let shards = shards.max(1) as u64;
    let h = match hasher {
        Hasher::Xxh3 => match key {
            KeyValue::Int(v) => xxhash_rust::xxh3::xxh3_64(&v.to_be_bytes()),
            KeyValue::Uuid(u) => xxhash_rust::xxh3::xxh3_64(u),
            KeyValue::Text(t) => xxhash_rust::xxh3::xxh3_64(t),
        },
        Hasher::Postgres => partition_hash(key),
    };
    (h % shards) as usize
}

/// The 64-bit row hash PostgreSQL computes for a one-column hash partition key.
pub fn partition_hash(key: &KeyValue) -> u64 {
    let h = match key {
        KeyValue::Int(v) => {
            // hashint8extended: fold the high half into the low half so int2/int4/int8 of the
            // same value hash alike.
            let v = *v;
            let lo = v as u32;
            let hi = (v >> 32) as u32;
            let folded = if v >= 0 { lo ^ hi } else { lo ^ !hi };
            hash_u32_extended(folded, PARTITION_SEED)
        }
        KeyValue::Uuid(u) => hash_bytes_extended(u, PARTITION_SEED),
        KeyValue::Text(t) => hash_bytes_extended(t, PARTITION_SEED),
    };
    combine64(0, h)
}

fn combine64(a: u64, b: u64) -> u64 {
    a ^ b
        .wrapping_add(0x49a0_f4dd_15e5_a8e3)
        .wrapping_add(a << 54)
        .wrapping_add(a >> 7)
}

/// lookup3 state: three 32-bit lanes.
struct Lanes(u32, u32, u32);

impl Lanes {
    fn new(len: usize, seed: u64) -> Lanes {
        let init = 0x9e37_79b9u32
            .wrapping_add(len as u32)
            .wrapping_add(3_923_095);
        let mut s = Lanes(init, init, init);
        if seed != 0 {
            s.0 = s.0.wrapping_add((seed >> 32) as u32);
            s.1 = s.1.wrapping_add(seed as u32);
            s.mix();
        }
        s
    }

    fn mix(&mut self) {
        fn step(x: &mut u32, y: &mut u32, z: u32, r: u32) {
            *x = x.wrapping_sub(*y);
            *x ^= y.rotate_left(r);
            *y = y.wrapping_add(z);
        }
        let (mut a, mut b, mut c) = (self.0, self.1, self.2);
        step(&mut a, &mut c, b, 4);
        step(&mut b, &mut a, c, 6);
        step(&mut c, &mut b, a, 8);
        step(&mut a, &mut c, b, 16);
        step(&mut b, &mut a, c, 19);
        step(&mut c, &mut b, a, 4);
        *self = Lanes(a, b, c);
    }

    fn finish(mut self) -> u64 {
        let Lanes(a, b, c) = &mut self;
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(14));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(11));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(25));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(16));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(4));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(14));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(24));
        ((self.1 as u64) << 32) | self.2 as u64
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w[..b.len()].copy_from_slice(b);
    u32::from_le_bytes(w)
}

/// `hash_bytes_extended` (little-endian byte order, as on every platform usher runs on).
fn hash_bytes_extended(data: &[u8], seed: u64) -> u64 {
    let mut s = Lanes::new(data.len(), seed);
    let mut rest = data;
    while rest.len() >= 12 {
        s.0 = s.0.wrapping_add(le32(&rest[0..4]));
        s.1 = s.1.wrapping_add(le32(&rest[4..8]));
        s.2 = s.2.wrapping_add(le32(&rest[8..12]));
        s.mix();
        rest = &rest[12..];
    }
    // The last 0..=11 bytes: a takes bytes 0..4, b 4..8, c 8..11 shifted past its low byte
    // (which lookup3 reserves for the length).
    s.0 = s.0.wrapping_add(le32(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        s.1 = s.1.wrapping_add(le32(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        s.2 = s.2.wrapping_add(le32(&rest[8..]) << 8);
    }
    s.finish()
}

/// `hash_bytes_uint32_extended`.
fn hash_u32_extended(k: u32, seed: u64) -> u64 {
    let mut s = Lanes::new(4, seed);
    s.0 = s.0.wrapping_add(k);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_partition_hashes() {
        // Values from PostgreSQL 15: SELECT satisfies_hash_partition(...) agrees with these
        // remainders (checked end to end by tests/sharding.rs against a real server).
        let key = KeyValue::Int(1);
        let h = partition_hash(&key);
        assert_eq!(partition_hash(&KeyValue::Int(1)), h, "deterministic");
        // int2/int4/int8 of the same value hash alike, negatives included.
        for v in [0i64, 1, -1, 42, i32::MIN as i64, i32::MAX as i64] {
            let folded = partition_hash(&KeyValue::Int(v));
            let as_int4 = combine64(0, hash_u32_extended(v as i32 as u32, PARTITION_SEED));
            assert_eq!(folded, as_int4, "{v}");
        }
    }

    #[test]
    fn shards_in_range_and_spread() {
        let mut counts = [0usize; 4];
        for i in 0..4000i64 {
            for h in [Hasher::Xxh3, Hasher::Postgres] {
                let s = shard_for(h, &KeyValue::Int(i), 4);
                counts[s] += 1;
            }
        }
        assert!(counts.iter().all(|c| *c > 1600), "{counts:?}");
        assert_eq!(
            shard_for(Hasher::Xxh3, &KeyValue::Text(b"x".to_vec()), 1),
            0
        );
    }

    #[test]
    fn bytes_hash_covers_every_tail_length() {
        let data: Vec<u8> = (0u8..40).collect();
        let mut seen = std::collections::HashSet::new();
        for n in 0..data.len() {
            assert!(seen.insert(hash_bytes_extended(&data[..n], PARTITION_SEED)));
        }
    }
}

#[cfg(test)]
mod postgres_agrees {
    use super::*;
    use crate::router::shard::keys::parse_uuid;

    /// Partitions PostgreSQL 15 chose for `PARTITION BY HASH` with MODULUS 4 (read back with
    /// `SELECT tableoid::regclass, k FROM p`).
    #[test]
    fn same_remainders_as_postgres() {
        let ints = [
            3, 2, 0, 2, 1, 0, 0, 2, 1, 3, 1, 3, 3, 1, 1, 3, 1, 0, 2, 0, 3, 0, 0, 2, 1, 1,
        ];
        for (i, want) in ints.iter().enumerate() {
            let v = i as i64 - 5;
            assert_eq!(
                shard_for(Hasher::Postgres, &KeyValue::Int(v), 4),
                *want,
                "{v}"
            );
        }
        let uuid = |s: &str| KeyValue::Uuid(parse_uuid(s.as_bytes()).unwrap());
        assert_eq!(
            shard_for(
                Hasher::Postgres,
                &uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                4
            ),
            0
        );
        assert_eq!(
            shard_for(
                Hasher::Postgres,
                &uuid("00000000-0000-0000-0000-000000000001"),
                4
            ),
            1
        );
        let text = |s: &str| KeyValue::Text(s.as_bytes().to_vec());
        assert_eq!(
            shard_for(Hasher::Postgres, &text("hello world, this is long"), 4),
            0
        );
        assert_eq!(shard_for(Hasher::Postgres, &text("abc"), 4), 1);
        assert_eq!(shard_for(Hasher::Postgres, &text("x"), 4), 3);
    }
}
