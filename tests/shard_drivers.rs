//! What real drivers send to a sharded database, byte for byte as they send it: asyncpg
//! prepares with Parse/Describe/Flush before its first Bind, and sends text values in binary
//! format for parameters whose type a cast gives (`$1::text::bigint`). Each case checks
//! where the row landed, on the shard databases themselves.

mod common;

use common::fake_server::{error_code, frame};
use common::sharded::*;
use common::*;
use tokio::io::AsyncWriteExt;

const MAP: &str = r#"hasher = "xxh3"
key_type = "uuid"
default_shard = 0
tables = [
  { name = "families", column = "id" },
  { name = "items", column = "family_no", key_type = "bigint" },
]
"#;

async fn with_items(prefix: &str) -> Sharded {
    let s = setup(prefix, MAP).await;
    for db in &s.shards {
        topology().primary.psql(
            db,
            "CREATE TABLE items (family_no bigint NOT NULL, n int NOT NULL, how text NOT NULL); \
             GRANT ALL ON items TO trust_user",
        );
    }
    s
}

/// A key whose shard is (or is not) the default shard 0.
fn key_on(s: &Sharded, default: bool) -> i64 {
    (1..1000i64)
        .find(|k| (shard_of(&s.config, Some("items"), &k.to_string()) == 0) == default)
        .unwrap()
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut p = name.as_bytes().to_vec();
    p.push(0);
    p.extend_from_slice(sql.as_bytes());
    p.extend_from_slice(&[0, 0, 0]);
    frame(b'P', &p)
}

/// Bind of statement `name` with one parameter in `format`, then Execute and Sync.
fn bind_execute_sync(name: &str, format: i16, value: &[u8]) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&format.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(value.len() as i32).to_be_bytes());
    b.extend_from_slice(value);
    b.extend_from_slice(&[0, 0]);
    let mut out = frame(b'B', &b);
    out.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    out.extend(frame(b'S', b""));
    out
}

fn rows_by_shard(s: &Sharded, how: &str) -> Vec<usize> {
    per_shard(
        s,
        &format!("SELECT count(*) FROM items WHERE how = '{how}'"),
    )
    .iter()
    .map(|r| r[0].parse().unwrap())
    .collect()
}

fn errors(answers: &[(u8, Vec<u8>)]) -> Vec<String> {
    answers
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| error_code(b))
        .collect()
}

/// asyncpg's first parameterized statement on a new connection: Parse + Describe + Flush
/// (answered by the default shard, which is only preparing), then Bind + Execute + Sync for
/// a key on another shard. It runs there; before, it was refused as "pinned to shard 0".
/// Inside a held BEGIN the same sequence used to wait forever for a ReadyForQuery the Flush
/// never asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_ended_by_flush_does_not_pin_the_next_statement() {
    let s = with_items("flushprep").await;
    let insert = "INSERT INTO items (family_no, n, how) VALUES ($1, 1, 'flush')";
    let mut raw = raw_login(s.usher.port, "trust_user", s.db).await;
    let mut want = vec![0; 4];
    for (i, (default, in_block)) in [(false, false), (true, false), (false, true), (false, false)]
        .into_iter()
        .enumerate()
    {
        let key = key_on(&s, default);
        if in_block {
            raw.write_all(&frame(b'Q', b"BEGIN\0")).await.unwrap();
            read_readies(&mut raw, 1).await;
        }
        let name = format!("__asyncpg_stmt_{i}__");
        let mut out = parse(&name, insert);
        out.extend(frame(b'D', format!("S{name}\0").as_bytes()));
        out.extend(frame(b'H', b""));
        raw.write_all(&out).await.unwrap();
        let described = read_until_tag(&mut raw, b'n').await;
        assert_eq!(
            described.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            b"1tn",
            "ParseComplete, ParameterDescription, NoData"
        );
        raw.write_all(&bind_execute_sync(&name, 0, key.to_string().as_bytes()))
            .await
            .unwrap();
        let answers = read_readies(&mut raw, 1).await;
        assert!(errors(&answers).is_empty(), "{:?}", errors(&answers));
        let status = if in_block { b"T" } else { b"I" };
        assert_eq!(answers.last().unwrap().1, status);
        if in_block {
            raw.write_all(&frame(b'Q', b"COMMIT\0")).await.unwrap();
            read_readies(&mut raw, 1).await;
        }
        want[shard_of(&s.config, Some("items"), &key.to_string())] += 1;
        assert_eq!(rows_by_shard(&s, "flush"), want, "key {key}");
    }
    // The whole sequence pipelined, with a Parse the server rejects: the client sees the
    // error, the Bind and Execute are skipped as Postgres skips them, and its Sync answers.
    let key = key_on(&s, false);
    let mut out = parse("bad", "INSERT INTO items (family_no, nope) VALUES ($1, 1)");
    out.extend(frame(b'D', b"Sbad\0"));
    out.extend(frame(b'H', b""));
    out.extend(bind_execute_sync("bad", 0, key.to_string().as_bytes()));
    raw.write_all(&out).await.unwrap();
    let answers = read_readies(&mut raw, 1).await;
    assert_eq!(errors(&answers), ["42703"], "{answers:?}");
    assert_eq!(answers.last().unwrap().1, b"I");
    // And the connection goes on.
    raw.write_all(&parse("", insert)).await.unwrap();
    raw.write_all(&bind_execute_sync("", 0, key.to_string().as_bytes()))
        .await
        .unwrap();
    let answers = read_readies(&mut raw, 1).await;
    assert!(errors(&answers).is_empty(), "{answers:?}");
    want[shard_of(&s.config, Some("items"), &key.to_string())] += 1;
    assert_eq!(rows_by_shard(&s, "flush"), want);
}

/// A parameter whose type the Parse leaves to the server and a cast gives (`$1::text`),
/// sent in binary: its bytes are text. Before, they were read as the key type's binary
/// form: a uuid's 36 characters were refused, and a two-character number was read as an
/// int2 and sent to the wrong shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_parameter_in_binary_is_read_as_its_cast_type() {
    let s = with_items("castbin").await;
    let as_int2 = |k: i64| {
        i64::from(i16::from_be_bytes([
            k.to_string().as_bytes()[0],
            k.to_string().as_bytes()[1],
        ]))
    };
    // A two-digit key whose bytes, read as an int2, name another shard.
    let key = (10..100i64)
        .find(|k| {
            shard_of(&s.config, Some("items"), &k.to_string())
                != shard_of(&s.config, Some("items"), &as_int2(*k).to_string())
        })
        .unwrap();
    let mut raw = raw_login(s.usher.port, "trust_user", s.db).await;
    let mut out = parse(
        "",
        "INSERT INTO items (family_no, n, how) VALUES ($1::text::bigint, 1, 'cast')",
    );
    out.extend(bind_execute_sync("", 1, key.to_string().as_bytes()));
    raw.write_all(&out).await.unwrap();
    let answers = read_readies(&mut raw, 1).await;
    assert!(errors(&answers).is_empty(), "{answers:?}");
    let mut want = vec![0; 4];
    want[shard_of(&s.config, Some("items"), &key.to_string())] = 1;
    assert_eq!(rows_by_shard(&s, "cast"), want, "key {key}");
    // A uuid key as text in binary format.
    let id = "7d3f1c2a-9b8e-4f6d-a5c4-3b2a1f0e9d8c";
    let mut out = parse(
        "",
        "INSERT INTO families (id, name) VALUES ($1::text::uuid, 'cast')",
    );
    out.extend(bind_execute_sync("", 1, id.as_bytes()));
    raw.write_all(&out).await.unwrap();
    let answers = read_readies(&mut raw, 1).await;
    assert!(errors(&answers).is_empty(), "{answers:?}");
    let found: Vec<usize> = per_shard(
        &s,
        &format!("SELECT count(*) FROM families WHERE id = '{id}'"),
    )
    .iter()
    .map(|r| r[0].parse().unwrap())
    .collect();
    let mut want = vec![0; 4];
    want[shard_of(&s.config, Some("families"), id)] = 1;
    assert_eq!(found, want);
}
