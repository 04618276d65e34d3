-- Tables for the family-keyed pgbench script (benches/family.pgbench). Sent through usher,
-- so each statement runs on every shard. bigint keys: pgbench variables are numbers.
DROP TABLE IF EXISTS bench_progress;
DROP TABLE IF EXISTS bench_families;
CREATE TABLE bench_families (id bigint PRIMARY KEY, name text NOT NULL, seen timestamptz);
CREATE TABLE bench_progress (
    family_id bigint NOT NULL,
    child_no int NOT NULL,
    lesson_id int NOT NULL,
    score int NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bench_progress_family_child_idx ON bench_progress (family_id, child_no);
