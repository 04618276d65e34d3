#!/usr/bin/env bash
# Statements across shards, measured side by side in one run: each pgbench script below runs
# through usher over 4 shards (databases on one Postgres, two_phase_commit on), through usher
# over one database holding the same rows, and on that database directly, interleaved round by
# round. What it reports is the cost of spanning shards: latency of a fan-out read, a grouped
# read, an expression over aggregates (finished by one shard), a GROUP BY without the key with
# HAVING and ORDER BY (finished over the combined groups), a two-phase-commit UPDATE on two
# shards, a 4-row INSERT split over the shards, a pipeline of two one-row INSERTs
# (executemany) committed across shards, and a transaction block on one family against the
# same block writing a second family (widened across shards, two-phase commit).
#   SECS=10 ROUNDS=3 CLIENTS=8 [SCRIPTS="txn1 txn2"] benches/across.sh
cd "$(dirname "$0")/.."
SECS=${SECS:-10}; ROUNDS=${ROUNDS:-3}; CLIENTS=${CLIENTS:-8}
# Which scripts run (all by default), e.g. SCRIPTS="txn1 txn2".
SCRIPTS=${SCRIPTS:-count top grouped avg lessons update insert pipeline txn1 txn2}
source benches/lib.sh

PG=$(free_port)
start_primary "$PG"
psql_pg() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG" -U postgres "$@"; }
family_databases "$PG"

P_SHARD=$(free_port)
start_usher sharded "$(usher_header "$P_SHARD" | sed "s|^\[general\]|[general]\ntwo_phase_log = \"$WORK/two_phase.log\"|")
$(family_shards_toml "$PG" | sed 's|{ name = "bench_progress", column = "family_id" } ]|{ name = "bench_progress", column = "family_id" }, { name = "bench_inserts", column = "family_id" } ]|')
two_phase_commit = true"
PID_SHARD=$LAST_PID
P_PLAIN=$(free_port)
start_usher plain "$(usher_header "$P_PLAIN")
[databases.app]
shards = [ { primary = \"127.0.0.1:$PG/app\" } ]"
PID_PLAIN=$LAST_PID
sleep 1

# The same rows on both sides: families one by one through usher, then 100,000 progress rows
# as 1,000-row INSERTs (split across the shards by usher, plain on the one database).
family_load_through "$P_SHARD"
progress() {
  for b in $(seq 0 99); do
    awk -v b="$b" 'BEGIN { printf "INSERT INTO bench_progress (family_id, child_no, lesson_id, score) VALUES "
      for (i = 0; i < 1000; i++) { n = b * 1000 + i; printf "%s(%d, %d, %d, %d)", (i ? ", " : ""), n % 10000 + 1, n % 3, n % 50 + 1, (n * 37) % 101 }
      print ";" }'
  done
}
progress | PGPASSWORD=secret "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$P_SHARD" -U app app >/dev/null
progress | PGPASSWORD=secret "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG" -U app app >/dev/null
# Inserts go to a table of their own, so the reads measure the same rows every round.
INSERTS="CREATE TABLE bench_inserts (family_id bigint NOT NULL, child_no int NOT NULL, lesson_id int NOT NULL, score int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
PGPASSWORD=secret "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$P_SHARD" -U app app -c "$INSERTS"
PGPASSWORD=secret "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG" -U app app -c "$INSERTS"
for db in app shard_0 shard_1 shard_2 shard_3; do psql_pg -d "$db" -c "ANALYZE"; done
echo "progress rows per shard: $(for i in 0 1 2 3; do psql_pg -d "shard_$i" -Atc 'SELECT count(*) FROM bench_progress'; done | paste -sd' ')" >&2

S="$WORK/scripts"; mkdir -p "$S"
echo 'SELECT count(*) FROM bench_progress;' > "$S/count.sql"
echo 'SELECT family_id, score FROM bench_progress ORDER BY score DESC, family_id LIMIT 10;' > "$S/top.sql"
printf '\\set l random(1, 50)\nSELECT family_id, count(*), max(score) FROM bench_progress WHERE lesson_id = :l GROUP BY family_id ORDER BY 2 DESC, 1 LIMIT 5;\n' > "$S/grouped.sql"
printf '\\set a random(1, 10000)\n\\set b random(1, 10000)\nUPDATE bench_families SET seen = now() WHERE id IN (:a, :b);\n' > "$S/update.sql"
printf '\\set a random(1, 10000)\n\\set b random(1, 10000)\n\\set c random(1, 10000)\n\\set d random(1, 10000)\nINSERT INTO bench_inserts (family_id, child_no, lesson_id, score) VALUES (:a, 9, 1, 1), (:b, 9, 1, 1), (:c, 9, 1, 1), (:d, 9, 1, 1);\n' > "$S/insert.sql"
printf '\\set l random(1, 50)\nSELECT round(avg(score), 2), count(*) * 2 FROM bench_progress WHERE lesson_id = :l;\n' > "$S/avg.sql"
echo 'SELECT lesson_id, round(avg(score), 2) AS mean FROM bench_progress GROUP BY lesson_id HAVING count(*) > 10 ORDER BY mean DESC, lesson_id LIMIT 5;' > "$S/lessons.sql"
printf '\\set a random(1, 10000)\n\\set b random(1, 10000)\n\\startpipeline\nINSERT INTO bench_inserts (family_id, child_no, lesson_id, score) VALUES (:a, 9, 1, 1);\nINSERT INTO bench_inserts (family_id, child_no, lesson_id, score) VALUES (:b, 9, 1, 1);\n\\endpipeline\n' > "$S/pipeline.sql"

# A transaction block on one family, and the same block touching a second family (on
# another shard three times in four): the cost of widening it across shards and committing
# with two-phase commit, against the one-shard transaction.
printf '\\set a random(1, 10000)\nBEGIN;\nUPDATE bench_families SET seen = now() WHERE id = :a;\nSELECT count(*) FROM bench_progress WHERE family_id = :a;\nUPDATE bench_families SET seen = now() WHERE id = :a;\nCOMMIT;\n' > "$S/txn1.sql"
printf '\\set a random(1, 10000)\n\\set b random(1, 10000)\nBEGIN;\nUPDATE bench_families SET seen = now() WHERE id = :a;\nSELECT count(*) FROM bench_progress WHERE family_id = :a;\nUPDATE bench_families SET seen = now() WHERE id = :b;\nCOMMIT;\n' > "$S/txn2.sql"

RESULTS="$WORK/results"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for script in $SCRIPTS; do
    ARGS=(-f "$S/$script.sql" -c "$CLIENTS" -j 2 -T "$SECS")
    # pgbench pipelines need the extended protocol.
    [ "$script" = pipeline ] && ARGS+=(-M extended)
    r=$(run_pgbench "$P_SHARD" "$PID_SHARD" "${ARGS[@]}"); echo "$script sharded $r" | tee -a "$RESULTS" >&2
    r=$(run_pgbench "$P_PLAIN" "$PID_PLAIN" "${ARGS[@]}"); echo "$script plain $r" | tee -a "$RESULTS" >&2
    r=$(run_pgbench "$PG" "" "${ARGS[@]}"); echo "$script direct $r" | tee -a "$RESULTS" >&2
  done
done
echo "prepared transactions left: $(for i in 0 1 2 3; do psql_pg -d "shard_$i" -Atc 'SELECT count(*) FROM pg_prepared_xacts'; done | paste -sd' ')" >&2

median() { awk -v s="$1" -v w="$2" -v f="$3" '$1==s && $2==w {print $f}' "$RESULTS" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "Statements across 4 shards vs one database: $CLIENTS clients, ${SECS}s runs, $ROUNDS interleaved rounds (medians), $(nproc) cores"
echo
echo "| script | 4 shards via usher: TPS / latency ms | one database via usher | direct | latency ratio 4 shards / direct |"
echo "| --- | --- | --- | --- | --- |"
for script in $SCRIPTS; do
  ls=$(median "$script" sharded 4); ld=$(median "$script" direct 4)
  printf '| %s | %s / %s | %s / %s | %s / %s | %.2f |\n' "$script" "$(median "$script" sharded 3)" "$ls" \
    "$(median "$script" plain 3)" "$(median "$script" plain 4)" "$(median "$script" direct 3)" "$ld" \
    "$(awk -v a="$ls" -v b="$ld" 'BEGIN { print (b > 0) ? a / b : 0 }')"
done
