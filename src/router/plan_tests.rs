//! The plan for each kind of batch, from the statements a client sends to what usher does.

use super::*;
use crate::config::{load_str, Config};
use crate::router::classify::classify;
use crate::router::normalize::literal_spans;

fn config() -> Config {
    load_str(
        r#"
[general]
listen = "127.0.0.1:0"
two_phase_log = "/tmp/usher-plan-tests.log"
[[users]]
name = "u"
auth_type = "trust"
[databases.plain]
shards = [ { primary = "127.0.0.1:1/d" } ]
[databases.split]
read_write_split = true
volatile_functions_are_writes = true
shards = [ { primary = "127.0.0.1:1/d", replicas = ["127.0.0.1:2/d"] } ]
[databases.aggressive]
read_write_split = true
read_write_strategy = "aggressive"
shards = [ { primary = "127.0.0.1:1/d", replicas = ["127.0.0.1:2/d"] } ]
[databases.sharded]
shards = [ { primary = "127.0.0.1:1/s0" }, { primary = "127.0.0.1:1/s1" } ]
[databases.sharded.sharding]
key_type = "bigint"
tables = [ { name = "families", column = "id" } ]
[databases.twophase]
shards = [ { primary = "127.0.0.1:1/t0" }, { primary = "127.0.0.1:1/t1" }, { primary = "127.0.0.1:1/t2" } ]
[databases.twophase.sharding]
key_type = "bigint"
two_phase_commit = true
tables = [ { name = "families", column = "id" } ]
global_tables = [ "lessons" ]
"#,
        std::path::Path::new("plan.toml"),
    )
    .unwrap()
}

fn stmt(tag: u8, sql: &str) -> Statement {
    Statement {
        tag,
        sql: Some(Bytes::copy_from_slice(sql.as_bytes())),
        class: Some(Arc::new(classify(sql))),
        spans: literal_spans(sql.as_bytes()),
        ..Statement::default()
    }
}

fn tag(tag: u8) -> Statement {
    Statement {
        tag,
        ..Statement::default()
    }
}

fn facts<'a>(db: &'a Database) -> Facts<'a> {
    Facts {
        db,
        transaction_mode: true,
        held: None,
        aborted: false,
        role_override: None,
        shard_override: None,
        volatile: None,
        rotation: 0,
    }
}

fn plan_of(statements: &[Statement], facts: &Facts) -> Plan {
    plan(
        &Batch {
            statements,
            complete: true,
        },
        facts,
    )
}

fn run(p: Plan) -> Run {
    match p {
        Plan::Run(r) => r,
        other => panic!("expected a run, got {other:?}"),
    }
}

#[test]
fn without_split_or_shards_everything_runs_on_the_primary_unread() {
    let c = config();
    let db = &c.databases["plain"];
    // Statements that were never looked up are enough: nothing of them is read.
    let r = run(plan_of(&[tag(b'Q')], &facts(db)));
    assert_eq!((r.shard, r.primary, r.split), (0, true, false));
}

#[test]
fn split_sends_reads_to_replicas_and_writes_to_the_primary() {
    let c = config();
    let db = &c.databases["split"];
    let f = facts(db);
    assert!(!run(plan_of(&[stmt(b'Q', "SELECT 1")], &f)).primary);
    assert!(run(plan_of(&[stmt(b'Q', "UPDATE t SET v = 1")], &f)).primary);
    // Conservative: a read-write BEGIN goes to the primary with everything after it.
    assert!(run(plan_of(&[stmt(b'Q', "BEGIN")], &f)).primary);
    // A write later in the same pipelined batch decides for all of it.
    let batch = [
        stmt(b'P', "SELECT 1"),
        tag(b'B'),
        stmt(b'P', "DELETE FROM t"),
        tag(b'S'),
    ];
    assert!(run(plan_of(&batch, &f)).primary);
    // Session mode never splits.
    let session = Facts {
        transaction_mode: false,
        ..facts(db)
    };
    assert!(run(plan_of(&[stmt(b'Q', "SELECT 1")], &session)).primary);
    // SET usher.role in the batch applies to it.
    let r = run(plan_of(&[stmt(b'Q', "SET usher.role = 'primary'")], &f));
    assert_eq!(r.set_role, Some(RoleHint::Primary));
    assert!(r.primary);
}

#[test]
fn volatility_is_asked_for_then_decides() {
    let c = config();
    let db = &c.databases["split"];
    let q = [stmt(b'Q', "SELECT my_func(1)")];
    assert_eq!(
        plan_of(&q, &facts(db)),
        Plan::CheckFunctions(vec!["my_func".into()])
    );
    let known = |v| Facts {
        volatile: Some(v),
        ..facts(db)
    };
    assert!(run(plan_of(&q, &known(true))).primary);
    assert!(!run(plan_of(&q, &known(false))).primary);
}

#[test]
fn aggressive_holds_begin_and_routes_by_the_first_statement() {
    let c = config();
    let db = &c.databases["aggressive"];
    let Plan::Local(begin) = plan_of(&[stmt(b'Q', "begin")], &facts(db)) else {
        panic!("BEGIN is held");
    };
    assert_eq!(begin.tag, b"BEGIN");
    assert!(begin.hold.is_some());
    let held = stmt(b'Q', "BEGIN");
    let open = Facts {
        held: Some(&held),
        ..facts(db)
    };
    assert!(!run(plan_of(&[stmt(b'Q', "SELECT 1")], &open)).primary);
    assert!(run(plan_of(&[stmt(b'Q', "INSERT INTO t VALUES (1)")], &open)).primary);
    let Plan::Local(end) = plan_of(&[stmt(b'Q', "COMMIT")], &open) else {
        panic!("an empty transaction ends locally");
    };
    assert_eq!((end.tag, end.hold.is_none()), (&b"COMMIT"[..], true));
    // After a refusal only the end is accepted.
    let aborted = Facts {
        aborted: true,
        ..open
    };
    let Plan::Refuse(r) = plan_of(&[stmt(b'Q', "SELECT 1")], &aborted) else {
        panic!("refused");
    };
    assert_eq!(r.sqlstate, "25P02");
    assert!(matches!(
        plan_of(&[stmt(b'Q', "ROLLBACK")], &aborted),
        Plan::Local(Control { hold: None, .. })
    ));
    // A read-only BEGIN runs where its statements do: not held under aggressive.
    assert!(!matches!(
        plan_of(&[stmt(b'Q', "BEGIN READ ONLY")], &facts(db)),
        Plan::Local(_)
    ));
}

#[test]
fn extended_begin_batches_are_held_only_when_whole() {
    let c = config();
    let db = &c.databases["sharded"];
    let batch = [
        stmt(b'P', "START TRANSACTION"),
        Statement {
            bind: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0])),
            ..stmt(b'B', "START TRANSACTION")
        },
        Statement {
            of_statement: false,
            ..tag(b'D')
        },
        tag(b'E'),
        tag(b'S'),
    ];
    let Plan::Local(c) = plan_of(&batch, &facts(db)) else {
        panic!("held");
    };
    assert_eq!(c.tag, b"START TRANSACTION");
    assert_eq!(c.kinds, b"PBDX");
    assert!(c.extended);
    let partial = Batch {
        statements: &batch[..4],
        complete: false,
    };
    assert_eq!(plan(&partial, &facts(db)), Plan::Wait);
}

#[test]
fn sharded_batches_go_to_their_key_s_shard_or_are_refused() {
    let c = config();
    let db = &c.databases["sharded"];
    let map = db.sharding.as_ref().unwrap();
    let f = facts(db);
    for key in 1..20 {
        let want = shard::hinted(&ShardHint::Key(key.to_string()), map, 2).unwrap();
        let sql = format!("SELECT * FROM families WHERE id = {key}");
        assert_eq!(run(plan_of(&[stmt(b'Q', &sql)], &f)).shard, want);
    }
    assert_eq!(
        run(plan_of(&[stmt(b'Q', "/* usher: shard=1 */ SELECT 1")], &f)).shard,
        1
    );
    // Without a key: a read whose rows merge runs on every shard; the rest is refused,
    // naming what stops the merge; inside a transaction block it stays refused.
    let Plan::Fanout(fan) = plan_of(&[stmt(b'Q', "SELECT * FROM families ORDER BY id")], &f) else {
        panic!("a read on every shard");
    };
    assert!(fan.primary && !fan.split);
    let fanned = [
        stmt(b'P', "SELECT * FROM families LIMIT $1"),
        Statement {
            bind: Some(Bytes::from(vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'5', 0, 0])),
            spans: Vec::new(),
            ..stmt(b'B', "SELECT * FROM families LIMIT $1")
        },
        tag(b'E'),
        tag(b'S'),
    ];
    assert!(matches!(plan_of(&fanned, &f), Plan::Fanout(_)));
    // Grouped by the key, each shard's groups are final; by anything else, refused.
    for sql in [
        "SELECT id, count(*) FROM families GROUP BY id HAVING count(*) > 0 ORDER BY 2 DESC",
        "SELECT DISTINCT f.id, f.name FROM families f",
    ] {
        assert!(
            matches!(plan_of(&[stmt(b'Q', sql)], &f), Plan::Fanout(_)),
            "{sql}"
        );
    }
    // Grouped by something else, the partial groups combine when they can.
    let Plan::Fanout(fan) = plan_of(
        &[stmt(
            b'Q',
            "SELECT name, count(*) FROM families GROUP BY name",
        )],
        &f,
    ) else {
        panic!("partial groups combined");
    };
    assert!(fan.regroup);
    let Plan::Fanout(fan) = plan_of(
        &[stmt(b'Q', "SELECT id, count(*) FROM families GROUP BY id")],
        &f,
    ) else {
        panic!("groups by the key");
    };
    assert!(!fan.regroup);
    for (sql, named) in [
        (
            "SELECT name, stddev(id) FROM families GROUP BY name",
            "(a group could span shards), with aggregate function stddev()",
        ),
        (
            "SELECT DISTINCT ON (name) name, id FROM families ORDER BY name, id",
            "without the sharding key",
        ),
        (
            "SELECT variance(id) FROM families",
            "aggregate function variance()",
        ),
        (
            "SELECT * FROM families f JOIN other o ON o.id = f.id",
            "\"other\"",
        ),
    ] {
        let Plan::Refuse(r) = plan_of(&[stmt(b'Q', sql)], &f) else {
            panic!("{sql}");
        };
        assert_eq!((r.sqlstate, r.rejected), ("0A000", true));
        assert!(
            r.message.contains("no sharding key") && r.message.contains(named),
            "{}",
            r.message
        );
    }
    for batch in [
        vec![stmt(b'Q', "UPDATE families SET name = 'x'")],
        vec![stmt(b'Q', "SELECT * FROM families; SELECT 1")],
        fanned[..3].iter().cloned().chain([tag(b'H')]).collect(),
        // A sharded table read where pg_query's iterator does not look still needs its key.
        vec![stmt(
            b'Q',
            "SELECT (ARRAY[1, 2])[(SELECT count(*) FROM families)] FROM families WHERE id = 1",
        )],
        vec![stmt(
            b'Q',
            "INSERT INTO families (id, name) VALUES (1, (SELECT name FROM families LIMIT 1))",
        )],
        vec![stmt(
            b'Q',
            "DELETE FROM families WHERE id = 1 RETURNING (SELECT count(*) FROM families)",
        )],
    ] {
        assert!(matches!(plan_of(&batch, &f), Plan::Refuse(_)), "{batch:?}");
    }
    let held_begin = stmt(b'Q', "BEGIN");
    let in_block = Facts {
        held: Some(&held_begin),
        ..facts(db)
    };
    assert!(matches!(
        plan_of(&[stmt(b'Q', "SELECT * FROM families")], &in_block),
        Plan::Refuse(_)
    ));
    assert_eq!(
        plan_of(&[stmt(b'Q', "CREATE TABLE x (id int)")], &f),
        Plan::Broadcast
    );
    let held = stmt(b'Q', "BEGIN");
    let open = Facts {
        held: Some(&held),
        ..facts(db)
    };
    let Plan::Refuse(r) = plan_of(&[stmt(b'Q', "CREATE TABLE x (id int)")], &open) else {
        panic!("DDL inside a transaction");
    };
    assert_eq!((r.sqlstate, r.rejected), ("0A000", false));
    // Only preparing: any shard answers, and a held BEGIN stays held.
    let prepare = [
        stmt(b'P', "SELECT * FROM families WHERE id = $1"),
        tag(b'S'),
    ];
    let r = run(plan_of(&prepare, &open));
    assert_eq!((r.shard, r.prepare_only), (0, true));
    assert!(!run(plan_of(&prepare, &f)).prepare_only);
    // Bound by its parameter: the Bind's value picks the shard.
    let want = shard::hinted(&ShardHint::Key("7".into()), map, 2).unwrap();
    // Portal "", statement "", no formats, one parameter "7", no result formats.
    let bind = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0];
    let bound = Statement {
        bind: Some(Bytes::from(bind)),
        spans: Vec::new(),
        ..stmt(b'B', "SELECT * FROM families WHERE id = $1")
    };
    let batch = [prepare[0].clone(), bound, tag(b'E'), tag(b'S')];
    assert_eq!(run(plan_of(&batch, &f)).shard, want);
}

#[test]
fn writes_across_shards_run_where_their_keys_are_with_two_phase_commit() {
    let c = config();
    let db = &c.databases["twophase"];
    let map = db.sharding.as_ref().unwrap();
    let f = facts(db);
    let shard = |k: i64| shard::hinted(&ShardHint::Key(k.to_string()), map, 3).unwrap();
    let (a, b) = (1..100)
        .flat_map(|a| (1..100).map(move |b| (a, b)))
        .find(|(a, b)| shard(*a) < shard(*b))
        .unwrap();
    let Plan::FanoutWrite(w) = plan_of(
        &[stmt(
            b'Q',
            &format!("UPDATE families SET name = 'x' WHERE id IN ({a}, {b})"),
        )],
        &f,
    ) else {
        panic!("a write on two shards");
    };
    assert_eq!(w.shards, vec![shard(a), shard(b)]);
    let Plan::FanoutWrite(w) = plan_of(&[stmt(b'Q', "DELETE FROM families")], &f) else {
        panic!("a write on every shard");
    };
    assert_eq!(w.shards, vec![0, 1, 2]);
    // A user function is looked up first; a VOLATILE one is refused.
    let q = [stmt(b'Q', "UPDATE families SET name = my_func(name)")];
    assert_eq!(
        plan_of(&q, &f),
        Plan::CheckFunctions(vec!["my_func".into()])
    );
    let known = |v| Facts {
        volatile: Some(v),
        ..facts(db)
    };
    assert!(matches!(plan_of(&q, &known(false)), Plan::FanoutWrite(_)));
    let Plan::Refuse(r) = plan_of(&q, &known(true)) else {
        panic!("a volatile function is refused");
    };
    assert!(
        r.message.contains("VOLATILE function (my_func)"),
        "{}",
        r.message
    );
    for (sql, named) in [
        ("UPDATE families SET id = 5", "sharding key id"),
        ("UPDATE families SET name = nextval('s')::text", "nextval()"),
        (
            "UPDATE families f SET name = 'x' FROM other o WHERE o.id = f.id",
            "\"other\"",
        ),
    ] {
        let Plan::Refuse(r) = plan_of(&[stmt(b'Q', sql)], &f) else {
            panic!("{sql}");
        };
        assert_eq!(r.sqlstate, "0A000");
        assert!(r.message.contains(named), "{sql}: {}", r.message);
    }
    // A write to a global table runs on every copy; nothing that differs per copy.
    let Plan::FanoutWrite(w) = plan_of(&[stmt(b'Q', "UPDATE lessons SET title = 'x'")], &f) else {
        panic!("a global write on every shard");
    };
    assert!(w.global && w.rows.is_none());
    assert_eq!(w.shards, vec![0, 1, 2]);
    for (sql, named) in [
        ("UPDATE lessons SET title = random()::text", "random()"),
        (
            "UPDATE lessons l SET title = 'x' FROM families f WHERE f.id = 1",
            "not global",
        ),
    ] {
        let Plan::Refuse(r) = plan_of(&[stmt(b'Q', sql)], &f) else {
            panic!("{sql}");
        };
        assert!(r.message.contains(named), "{sql}: {}", r.message);
    }
    // Without two_phase_commit the refusal names the setting.
    let Plan::Refuse(r) = plan_of(
        &[stmt(b'Q', "DELETE FROM families")],
        &facts(&c.databases["sharded"]),
    ) else {
        panic!("refused without two-phase commit");
    };
    assert!(
        r.message.contains("two_phase_commit = true"),
        "{}",
        r.message
    );
}

#[test]
fn pipelines_of_one_shard_statements_run_on_their_shards() {
    let c = config();
    let f = facts(&c.databases["twophase"]);
    let map = c.databases["twophase"].sharding.as_ref().unwrap();
    // Keys of two different shards.
    let shard = |k: i64| shard::hinted(&ShardHint::Key(k.to_string()), map, 3).unwrap();
    let other = (2..100).find(|k| shard(*k) != shard(1)).unwrap();
    let execution = |sql: &str| vec![stmt(b'P', sql), stmt(b'B', sql), tag(b'D'), tag(b'E')];
    let insert = |k: i64| execution(&format!("INSERT INTO families (id) VALUES ({k})"));
    let mut batch: Vec<Statement> = insert(1);
    batch.extend(execution(&format!(
        "SELECT * FROM families WHERE id = {other}"
    )));
    batch.extend(insert(other));
    batch.push(tag(b'S'));
    let planned = plan_of(&batch, &f);
    let Plan::Pipeline(p) = planned else {
        panic!("a pipeline across shards: {planned:?}");
    };
    assert_eq!(p.segments, vec![shard(1), shard(other), shard(other)]);
    assert_eq!(p.writes, vec![true, false, true]);
    assert_eq!(p.writing_shards(), 2);
    // Transaction control, a statement needing several shards, no Sync, or a database
    // without two-phase commit: refused as before.
    for bad in [
        execution("SAVEPOINT a"),
        execution("SELECT * FROM families"),
        execution("BEGIN"),
    ] {
        let mut b = insert(1);
        b.extend(insert(other));
        b.extend(bad);
        b.push(tag(b'S'));
        assert!(matches!(plan_of(&b, &f), Plan::Refuse(_)));
    }
    let mut unsynced = insert(1);
    unsynced.extend(insert(other));
    unsynced.push(tag(b'H'));
    assert!(matches!(plan_of(&unsynced, &f), Plan::Refuse(_)));
    let one_phase = facts(&c.databases["sharded"]);
    let sharded = c.databases["sharded"].sharding.as_ref().unwrap();
    let s2 = |k: i64| shard::hinted(&ShardHint::Key(k.to_string()), sharded, 2).unwrap();
    let o2 = (2..100).find(|k| s2(*k) != s2(1)).unwrap();
    let mut b = insert(1);
    b.extend(insert(o2));
    b.push(tag(b'S'));
    let Plan::Refuse(r) = plan_of(&b, &one_phase) else {
        panic!("writes on two shards without two-phase commit");
    };
    assert!(r.message.contains("two_phase_commit"), "{}", r.message);
}

#[test]
fn an_insert_without_columns_asks_where_the_key_stands_then_runs_on_its_shard() {
    let c = config();
    let db = &c.databases["sharded"];
    let map = db.sharding.as_ref().unwrap();
    let f = facts(db);
    let sql = "INSERT INTO families VALUES (7, 'seven')";
    assert_eq!(
        plan_of(&[stmt(b'Q', sql)], &f),
        Plan::CheckColumns(CheckColumns {
            table: "families".into(),
            column: "id".into()
        })
    );
    map.key_positions.set("families", Some(0));
    let want = shard::hinted(&ShardHint::Key("7".into()), map, 2).unwrap();
    assert_eq!(run(plan_of(&[stmt(b'Q', sql)], &f)).shard, want);
    // Looked up and not found: refused, not asked again.
    map.key_positions.set("families", None);
    let Plan::Refuse(r) = plan_of(&[stmt(b'Q', sql)], &f) else {
        panic!("refused");
    };
    assert!(r.message.contains("without a column list"), "{}", r.message);
}

#[test]
fn a_query_of_one_shard_statements_is_a_pipeline() {
    let c = config();
    let f = facts(&c.databases["twophase"]);
    let map = c.databases["twophase"].sharding.as_ref().unwrap();
    let shard = |k: i64| shard::hinted(&ShardHint::Key(k.to_string()), map, 3).unwrap();
    let other = (2..100).find(|k| shard(*k) != shard(1)).unwrap();
    let sql = format!(
        "INSERT INTO families (id) VALUES (1); SELECT * FROM families WHERE id = {other}; UPDATE families SET name = 'x' WHERE id = {other}"
    );
    let Plan::Pipeline(p) = plan_of(&[stmt(b'Q', &sql)], &f) else {
        panic!("a pipeline");
    };
    assert_eq!(p.segments, vec![shard(1), shard(other), shard(other)]);
    assert_eq!(p.writes, vec![true, false, true]);
    assert_eq!(p.statements.as_ref().map(Vec::len), Some(3));
    // Transaction control inside the string keeps the refusal.
    let sql = format!("BEGIN; INSERT INTO families (id) VALUES (1); INSERT INTO families (id) VALUES ({other}); COMMIT");
    assert!(matches!(plan_of(&[stmt(b'Q', &sql)], &f), Plan::Refuse(_)));
}

/// Plans `statements` inside a transaction across shards.
fn within_of(statements: &[Statement], facts: &Facts) -> Within {
    plan_within(
        &Batch {
            statements,
            complete: true,
        },
        facts,
    )
}

#[test]
fn inside_a_transaction_across_shards() {
    let c = config();
    let f = facts(&c.databases["twophase"]);
    let map = c.databases["twophase"].sharding.as_ref().unwrap();
    let shard = |k: i64| shard::hinted(&ShardHint::Key(k.to_string()), map, 3).unwrap();
    // One keyed statement: one segment on its shard (a single one is a pipeline here).
    let Within::Segments(p) = within_of(
        &[stmt(b'Q', "UPDATE families SET name = 'x' WHERE id = 7")],
        &f,
    ) else {
        panic!("segments");
    };
    assert_eq!((p.segments, p.writes), (vec![shard(7)], vec![true]));
    // A Parse and Describe only: no segment, any member answers.
    let Within::Segments(p) = within_of(
        &[
            stmt(b'P', "SELECT * FROM families WHERE id = $1"),
            tag(b'D'),
            tag(b'S'),
        ],
        &f,
    ) else {
        panic!("segments");
    };
    assert!(p.segments.is_empty());
    // Without a key: across shards, as outside a transaction.
    assert!(matches!(
        within_of(&[stmt(b'Q', "SELECT count(*) FROM families")], &f),
        Within::Plan(Plan::Fanout(_))
    ));
    assert!(matches!(
        within_of(&[stmt(b'Q', "UPDATE families SET name = 'x'")], &f),
        Within::Plan(Plan::FanoutWrite(_))
    ));
    // The end, a second BEGIN, and closes.
    let Within::End(end) = within_of(&[stmt(b'Q', "commit")], &f) else {
        panic!("end");
    };
    assert_eq!(end.tag, b"COMMIT");
    let Within::End(end) = within_of(&[stmt(b'Q', "ABORT")], &f) else {
        panic!("end");
    };
    assert_eq!(end.tag, b"ROLLBACK");
    assert!(matches!(
        within_of(&[stmt(b'Q', "BEGIN")], &f),
        Within::Begin(_)
    ));
    assert_eq!(within_of(&[tag(b'C'), tag(b'S')], &f), Within::Close);
    // What would change one shard's part only is refused, named.
    for sql in [
        "SAVEPOINT a",
        "SET LOCAL work_mem = '1MB'",
        "LOCK families",
        "CREATE TABLE x (a int)",
    ] {
        let Within::Plan(Plan::Refuse(r)) = within_of(&[stmt(b'Q', sql)], &f) else {
            panic!("{sql}: refused");
        };
        assert_eq!(r.sqlstate, "0A000", "{sql}");
        let word = sql.split_whitespace().next().unwrap();
        assert!(r.message.contains(word), "{sql}: {}", r.message);
    }
    // An incomplete request waits.
    assert_eq!(
        plan_within(
            &Batch {
                statements: &[stmt(b'P', "SELECT 1")],
                complete: false,
            },
            &f
        ),
        Within::Wait
    );
}
