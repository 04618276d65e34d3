//! Placement of whole statements against a shard map, from SQL text to shard or error.

use super::values::{BindParams, QueryValues};
use super::*;
use crate::config::{Hasher, ShardedTable};
use crate::router::classify::classify;

fn map() -> Sharding {
    let t = |name: &str, column: &str| ShardedTable {
        name: name.into(),
        column: column.into(),
        key_type: None,
    };
    Sharding {
        hasher: Hasher::Xxh3,
        key_type: KeyType::Bigint,
        default_shard: 0,
        tables: vec![
            t("families", "id"),
            t("children", "family_id"),
            t("user_progress", "family_id"),
        ],
        global_tables: vec!["lessons".into()],
        two_phase_commit: false,
        two_phase_lock_timeout: crate::config::ConfigDuration::secs(5),
        key_positions: Default::default(),
    }
}

fn shard_of(v: i64) -> usize {
    shard_for(Hasher::Xxh3, &KeyValue::Int(v), 4)
}

/// Two keys on different shards.
fn split_keys() -> (i64, i64) {
    let a = 1;
    let b = (2..100).find(|b| shard_of(*b) != shard_of(a)).unwrap();
    (a, b)
}

fn place_sql(sql: &str) -> Result<Placement, ShardError> {
    let c = classify(sql);
    place(&c.shard, &map(), 4, &mut QueryValues::text(sql.as_bytes()))
}

#[test]
fn keyed_statements() {
    let s = Placement::Shard(shard_of(42));
    for sql in [
        "SELECT * FROM families WHERE id = 42",
        "SELECT * FROM families WHERE id = '42'",
        "SELECT * FROM public.families f WHERE 42 = f.id AND f.name <> 'x'",
        "SELECT * FROM children c JOIN user_progress p ON p.family_id = c.family_id WHERE c.family_id = 42",
        "SELECT * FROM children c JOIN lessons l ON l.id = 7 WHERE c.family_id = 42::bigint",
        "SELECT * FROM children WHERE family_id IN (42, 42)",
        "INSERT INTO children (id, family_id) VALUES (1, 42), (2, 42)",
        "UPDATE user_progress SET status = 'done' WHERE family_id = 42 AND child_id = 3",
        "DELETE FROM children WHERE family_id = 42",
        "INSERT INTO user_progress (family_id, child_id) SELECT c.family_id, c.id FROM children c WHERE c.family_id = 42",
        "SELECT * FROM families WHERE id = 42; SELECT * FROM children WHERE family_id = 42",
        "SELECT * FROM families WHERE id = 0x2A",
        "SELECT * FROM children a JOIN children b USING (family_id) WHERE a.family_id = 42",
        // A pin carries inward into correlated subqueries and through outer joins' ON.
        "SELECT f.*, (SELECT count(*) FROM children c WHERE c.family_id = f.id) FROM families f WHERE f.id = 42",
        "SELECT * FROM families f LEFT JOIN children c ON c.family_id = f.id WHERE f.id = 42",
        "SELECT * FROM children c RIGHT JOIN families f ON c.family_id = f.id WHERE c.family_id = 42",
        "SELECT * FROM families f WHERE f.id = 42 AND EXISTS (SELECT 1 FROM children c WHERE c.family_id = f.id)",
        "SELECT * FROM families f, LATERAL (SELECT * FROM children c WHERE c.family_id = f.id) x WHERE f.id = 42",
        "SELECT * FROM (SELECT * FROM families WHERE id = 42) s",
        "SELECT * FROM families WHERE id = 42 UNION ALL SELECT * FROM families WHERE id = 42",
        "SELECT * FROM families f WHERE f.id = 42 AND EXISTS (SELECT 1 FROM children f WHERE f.family_id = 42)",
        "WITH x AS (SELECT * FROM children WHERE family_id = 42) SELECT * FROM families f JOIN x ON true WHERE f.id = 42",
    ] {
        assert_eq!(place_sql(sql), Ok(s), "{sql}");
    }
    assert_eq!(
        place_sql("SELECT * FROM families WHERE id = -3"),
        Ok(Placement::Shard(shard_of(-3)))
    );
}

#[test]
fn keyless_and_global() {
    assert_eq!(place_sql("SELECT 1"), Ok(Placement::NoTable));
    assert_eq!(place_sql("SELECT * FROM lessons"), Ok(Placement::AnyShard));
    assert_eq!(place_sql("SELECT * FROM settings"), Ok(Placement::Unlisted));
    assert_eq!(
        place_sql("INSERT INTO settings VALUES (1)"),
        Ok(Placement::Unlisted)
    );
    assert_eq!(
        place_sql("CREATE TABLE x (a int)"),
        Ok(Placement::Broadcast)
    );
    assert_eq!(
        place_sql("SELECT * FROM pg_catalog.pg_class, information_schema.tables"),
        Ok(Placement::NoTable)
    );
}

#[test]
fn errors_name_the_table() {
    let (a, b) = split_keys();
    let cases = [
        ("SELECT * FROM children".to_string(), "no sharding key for table \"children\""),
        ("SELECT * FROM children WHERE family_id = 1 OR family_id = 2".into(), "no sharding key"),
        ("SELECT * FROM children c JOIN user_progress p ON p.child_id = c.id WHERE c.family_id = 1".into(), "\"user_progress\""),
        (format!("SELECT * FROM children WHERE family_id IN ({a}, {b})"), "different shards"),
        (format!("INSERT INTO children (id, family_id) VALUES (1, {a}), (2, {b})"), "different shards"),
        ("INSERT INTO children VALUES (1, 2)".into(), "without a column list"),
        ("INSERT INTO children (id) VALUES (1)".into(), "no sharding key"),
        ("INSERT INTO children (id, family_id) VALUES (1, 2 + 3)".into(), "literal or a parameter"),
        (format!("UPDATE children SET family_id = {b} WHERE family_id = {a}"), "different shards"),
        ("UPDATE children SET family_id = family_id + 1 WHERE family_id = 1".into(), "literal or a parameter"),
        ("INSERT INTO lessons (id) VALUES (1)".into(), "global table"),
        ("DELETE FROM lessons".into(), "global table"),
        ("COPY children FROM STDIN".into(), "COPY into sharded table"),
        ("CREATE TABLE t (a int); SELECT * FROM families WHERE id = 1".into(), "DDL runs on every shard"),
        ("SELECT * FROM families WHERE id = 'abc'".into(), "not a valid bigint"),
        (format!("SELECT * FROM families WHERE id = {a}; SELECT * FROM families WHERE id = {b}"), "different shards"),
        // A condition pins only the rows of its own level, where it filters them.
        ("SELECT * FROM families WHERE id = 1 AND name IN (SELECT name FROM families)".into(), "\"families\""),
        ("WITH x AS (SELECT count(*) AS n FROM children) SELECT * FROM families, x WHERE id = 1".into(), "\"children\""),
        ("SELECT * FROM families f LEFT JOIN children c ON c.family_id = f.id AND f.id = 1".into(), "\"families\""),
        ("SELECT * FROM families f LEFT JOIN (children c JOIN user_progress p ON p.family_id = c.family_id AND c.family_id = 1) ON c.family_id = f.id".into(), "\"families\""),
        ("SELECT f.id, (SELECT count(*) FROM children c WHERE c.family_id = 1) FROM families f".into(), "\"families\""),
        ("SELECT * FROM families f WHERE EXISTS (SELECT 1 FROM children c WHERE c.family_id = f.id AND c.family_id = 1)".into(), "\"families\""),
        ("SELECT * FROM families f WHERE EXISTS (SELECT 1 FROM children c WHERE f.id = 1)".into(), "\"families\""),
        ("MERGE INTO families f USING children c ON c.family_id = f.id AND f.id = 1 WHEN MATCHED THEN DO NOTHING".into(), "no sharding key"),
        ("INSERT INTO user_progress (family_id, child_id) SELECT c.family_id, c.id FROM children c".into(), "no sharding key"),
        // Tables only named where pg_query's iterator does not look.
        ("INSERT INTO families (id, name) VALUES (1, (SELECT name FROM children LIMIT 1))".into(), "no sharding key for table \"children\""),
        ("INSERT INTO families (id) VALUES (1) RETURNING (SELECT count(*) FROM children)".into(), "no sharding key for table \"children\""),
        ("UPDATE families SET name = 'x' WHERE id = 1 RETURNING (SELECT count(*) FROM user_progress)".into(), "\"user_progress\""),
        ("SELECT (ARRAY[1, 2])[(SELECT count(*) FROM children)] FROM families WHERE id = 1".into(), "\"children\""),
    ];
    for (sql, want) in cases {
        let e = place_sql(&sql).expect_err(&sql);
        assert!(e.to_string().contains(want), "{sql}: {e}");
    }
    assert_eq!(
        place_sql("SELECT * FROM families WHERE id = 'abc'")
            .unwrap_err()
            .sqlstate(),
        "22P02"
    );
    assert_eq!(
        place_sql("SELECT * FROM children").unwrap_err().sqlstate(),
        "0A000"
    );
}

#[test]
fn bind_parameters_text_and_binary() {
    let sql = "SELECT * FROM children WHERE family_id = $1";
    let c = classify(sql);
    let want = Ok(Placement::Shard(shard_of(42)));
    let bind = |format: i16, value: &[u8]| {
        let mut b = b"\0\0".to_vec();
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&format.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&(value.len() as i32).to_be_bytes());
        b.extend_from_slice(value);
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    };
    for (format, value, types) in [
        (0, b"42".to_vec(), vec![]),
        (1, 42i64.to_be_bytes().to_vec(), vec![]),
        (1, 42i32.to_be_bytes().to_vec(), vec![23]),
        (1, 42i16.to_be_bytes().to_vec(), vec![21]),
        (1, b"42".to_vec(), vec![25]),
    ] {
        let body = bind(format, &value);
        let mut v = QueryValues::bound(sql.as_bytes(), types, BindParams::parse(&body));
        assert_eq!(place(&c.shard, &map(), 4, &mut v), want);
    }
    // A type the Parse leaves to the server is the one a cast on the parameter gives it:
    // `$1::text` is sent as text bytes in binary format (asyncpg does this).
    for (sql, value) in [
        (
            "SELECT * FROM children WHERE family_id = $1::text::bigint",
            b"42".to_vec(),
        ),
        (
            "SELECT * FROM children WHERE family_id = $1::varchar(8)",
            b"42".to_vec(),
        ),
        (
            "SELECT * FROM children WHERE family_id = $1::int4",
            42i32.to_be_bytes().to_vec(),
        ),
        (
            "INSERT INTO children (family_id) VALUES ($1::pg_catalog.text::int8)",
            b"42".to_vec(),
        ),
    ] {
        let c = classify(sql);
        let body = bind(1, &value);
        let mut v = QueryValues::bound(sql.as_bytes(), vec![], BindParams::parse(&body));
        assert_eq!(place(&c.shard, &map(), 4, &mut v), want, "{sql}");
    }
    // A cast to a type whose binary form usher does not decode is refused, not guessed.
    let sql = "SELECT * FROM children WHERE family_id = $1::numeric::bigint";
    let c = classify(sql);
    let body = bind(1, &42i64.to_be_bytes());
    let mut v = QueryValues::bound(sql.as_bytes(), vec![], BindParams::parse(&body));
    assert_eq!(
        place(&c.shard, &map(), 4, &mut v).unwrap_err().sqlstate(),
        "22P02"
    );
    // Not bound yet (a Parse on its own): any shard may prepare it.
    let mut v = QueryValues::text(sql.as_bytes());
    assert_eq!(place(&c.shard, &map(), 4, &mut v), Ok(Placement::Unbound));
    // NULL key.
    let mut body = b"\0\0\0\0\0\x01\xff\xff\xff\xff\0\0".to_vec();
    let mut v = QueryValues::bound(sql.as_bytes(), vec![], BindParams::parse(&body));
    assert_eq!(
        place(&c.shard, &map(), 4, &mut v).unwrap_err().sqlstate(),
        "22004"
    );
    body.truncate(3);
    let mut v = QueryValues::bound(sql.as_bytes(), vec![], BindParams::parse(&body));
    assert_eq!(place(&c.shard, &map(), 4, &mut v), Ok(Placement::Unbound));
}

#[test]
fn hints() {
    let m = map();
    assert_eq!(hinted(&ShardHint::Shard(3), &m, 4), Ok(3));
    assert!(hinted(&ShardHint::Shard(4), &m, 4).is_err());
    assert_eq!(
        hinted(&ShardHint::Key("42".into()), &m, 4),
        Ok(shard_of(42))
    );
    assert_eq!(
        hinted(&ShardHint::Key("x".into()), &m, 4)
            .unwrap_err()
            .sqlstate(),
        "22P02"
    );
}
