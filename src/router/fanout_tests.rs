//! Shapes of cross-shard reads, from SQL text.

use super::*;

fn shape_of(sql: &str) -> Shape {
    let (parsed, s) = parse_select(sql);
    shape(&parsed, &s)
}

fn merge(sql: &str) -> Merge {
    match shape_of(sql) {
        Shape::Merge(m) => *m,
        Shape::Refused(r) => panic!("{sql}: refused ({r})"),
        Shape::Write | Shape::Insert | Shape::CopyOut(_) => panic!("{sql}: not a merge"),
    }
}

fn key(column: SortColumn, descending: bool, nulls_first: bool) -> SortKey {
    SortKey {
        column,
        descending,
        nulls_first,
    }
}

#[test]
fn order_keys_are_output_columns() {
    use SortColumn::*;
    let m =
        merge("SELECT id, name AS n, grade FROM children ORDER BY grade DESC, n, 1 NULLS FIRST");
    assert_eq!(
        m.order,
        vec![
            key(Position(2), true, true),
            key(Position(1), false, false),
            key(Position(0), false, true),
        ]
    );
    assert_eq!(m.limit, None);
    assert_eq!(m.shard_sql, None);
    // The same expression as a select-list item; a qualified column; a `*` column by name.
    let m = merge(
        "SELECT c.id, lower(c.name) FROM children c ORDER BY lower(c.name) DESC NULLS LAST, c.id",
    );
    assert_eq!(
        m.order,
        vec![
            key(Position(1), true, false),
            key(Position(0), false, false)
        ]
    );
    let m = merge("SELECT * FROM children ORDER BY grade");
    assert_eq!(m.order, vec![key(Name("grade".into()), false, false)]);
}

#[test]
fn limit_and_offset_push_down() {
    let m = merge("SELECT id FROM children ORDER BY id LIMIT 10");
    assert_eq!(m.limit, Some(Count::Value(10)));
    assert_eq!(m.shard_sql, None, "a LIMIT alone runs as written");
    let m = merge("SELECT id FROM children ORDER BY id LIMIT 10 OFFSET 5");
    assert_eq!(
        (m.limit, m.offset),
        (Some(Count::Value(10)), Some(Count::Value(5)))
    );
    assert_eq!(
        m.shard_sql.as_deref(),
        Some("SELECT id FROM children ORDER BY id LIMIT 15")
    );
    let m = merge("SELECT id FROM children ORDER BY id LIMIT $1 OFFSET $2");
    assert_eq!(
        (m.limit, m.offset),
        (Some(Count::Param(1)), Some(Count::Param(2)))
    );
    assert_eq!(
        m.shard_sql.as_deref(),
        Some("SELECT id FROM children ORDER BY id LIMIT $1::bigint + $2::bigint")
    );
    let m = merge("SELECT id FROM children OFFSET 3");
    assert_eq!(m.shard_sql.as_deref(), Some("SELECT id FROM children"));
    let m = merge("SELECT id FROM children ORDER BY id LIMIT 4000000000 OFFSET 1");
    assert_eq!(
        m.shard_sql.as_deref(),
        Some("SELECT id FROM children ORDER BY id LIMIT 4000000001")
    );
    // Negative counts are left for the shards to refuse, as Postgres does.
    assert_eq!(
        merge("SELECT id FROM children LIMIT 2 OFFSET -1").shard_sql,
        None
    );
    assert_eq!(merge("SELECT id FROM children LIMIT ALL").limit, None);
}

#[test]
fn what_cannot_merge_exactly_is_named() {
    for (sql, named) in [
        (
            "SELECT stddev(grade) FROM children",
            "aggregate function stddev()",
        ),
        (
            "SELECT avg(DISTINCT grade), sum(grade) FROM children",
            "aggregate function avg()",
        ),
        (
            "SELECT count(DISTINCT grade), count(*) FROM children",
            "aggregate function count()",
        ),
        (
            "SELECT id, max(grade) FROM children",
            "a column outside an aggregate function",
        ),
        (
            "SELECT (array_agg(grade))[1] FROM children",
            "aggregate function array_agg()",
        ),
        (
            "SELECT grade, count(*) FROM children GROUP BY CUBE (grade)",
            "GROUPING SETS, ROLLUP or CUBE",
        ),
        (
            "SELECT id, row_number() OVER () FROM children",
            "window function row_number()",
        ),
        (
            "SELECT id FROM children UNION SELECT id FROM families",
            "UNION, INTERSECT or EXCEPT",
        ),
        (
            "SELECT id FROM children WHERE grade > (SELECT 1)",
            "subqueries",
        ),
        (
            "WITH c AS (SELECT 1) SELECT id FROM children",
            "WITH (common table expressions)",
        ),
        (
            "SELECT id FROM children ORDER BY grade",
            "ORDER BY an expression that is not in the select list",
        ),
        (
            "SELECT id FROM children ORDER BY name COLLATE \"C\"",
            "ORDER BY ... COLLATE",
        ),
        (
            "SELECT id, grade AS id FROM children ORDER BY id",
            "ORDER BY id (ambiguous)",
        ),
        (
            "SELECT id FROM children LIMIT 1 + 1",
            "LIMIT with an expression",
        ),
        (
            "SELECT id FROM children ORDER BY id FETCH FIRST 2 ROWS WITH TIES",
            "FETCH ... WITH TIES",
        ),
    ] {
        assert_eq!(shape_of(sql), Shape::Refused(named.into()), "{sql}");
    }
}

#[test]
fn a_select_list_of_aggregates_combines() {
    use Aggregate::*;
    let m = merge("SELECT count(*), count(birth_date) AS n, sum(grade), min(birth_date), max(grade), bool_and(grade > 0), every(true), bool_or(false) FROM children ORDER BY 1");
    assert_eq!(
        m.aggregates,
        Some(vec![Count, Count, Sum, Min, Max, And, And, Or])
    );
    assert!(m.order.is_empty(), "one row: its order is moot");
    assert_eq!(merge("SELECT id FROM children").aggregates, None);
    let m = merge("SELECT pg_catalog.count(*) FROM children LIMIT 1 OFFSET 1");
    assert_eq!(m.aggregates, Some(vec![Count]));
    assert!(m.shard_sql.is_some());
}

#[test]
fn an_average_brings_its_sum_and_count_as_hidden_columns() {
    use Aggregate::*;
    let m = merge("SELECT avg(grade) AS g, count(*), avg(id + 1) FROM children OFFSET 1");
    assert_eq!(m.aggregates, Some(vec![Avg, Count, Avg]));
    assert_eq!(m.hidden(), 4);
    assert_eq!(
        m.shard_sql.as_deref(),
        Some(concat!(
            "SELECT avg(grade) AS g, count(*), avg(id + 1), ",
            "pg_catalog.sum(grade) AS \"usher avg 1 sum\", ",
            "pg_catalog.count(grade) AS \"usher avg 1 count\", ",
            "pg_catalog.sum(id + 1) AS \"usher avg 2 sum\", ",
            "pg_catalog.count(id + 1) AS \"usher avg 2 count\" FROM children"
        ))
    );
    assert_eq!(merge("SELECT count(*) FROM children").hidden(), 0);
}

#[test]
fn expressions_over_aggregates_are_finished_over_the_combined_values() {
    let m = merge("SELECT round(avg(grade), 2), count(*) * 2 FROM children ORDER BY 1 LIMIT 1");
    assert_eq!(
        m.finish.as_deref(),
        Some("SELECT round($1, 2) AS round, $2 * 2 AS \"?column?\"")
    );
    assert_eq!(m.aggregates, Some(vec![Aggregate::Avg, Aggregate::Count]));
    assert_eq!(m.limit, Some(Count::Value(1)));
    assert!(m
        .shard_sql
        .unwrap()
        .starts_with("SELECT avg(grade), count(*), pg_catalog.sum(grade)"));
    assert_eq!(merge("SELECT count(*) FROM children").finish, None);
    assert!(matches!(
        shape_of("SELECT count(*) + 1 FROM children LIMIT $1"),
        Shape::Refused(r) if r.contains("LIMIT or OFFSET given as a parameter")
    ));
}

#[test]
fn a_plain_distinct_regroups_by_its_select_list() {
    let m = merge("SELECT DISTINCT grade, name FROM children");
    let Some(Ok(r)) = &m.regroup else {
        panic!("a regrouping: {:?}", m.regroup);
    };
    assert_eq!(r.columns, vec![None, None]);
    assert!(r.finish.is_none(), "no ORDER BY: combined as they are");
    let m = merge("SELECT DISTINCT lower(name) FROM children ORDER BY 1");
    assert!(matches!(&m.regroup, Some(Ok(r)) if r.finish.is_some()));
    for sql in [
        "SELECT DISTINCT * FROM children",
        "SELECT DISTINCT ON (grade) grade, name FROM children ORDER BY grade, name",
    ] {
        assert!(merge(sql).regroup.is_none(), "{sql}");
    }
}
