#!/usr/bin/env bash
# Sharding cost, measured side by side in one run: pgbench with a family-keyed custom script
# (benches/family.pgbench: read a family, read a child's progress, record a result, mark the
# family seen, in one transaction) through
#   - usher with sharding on, 4 shards (databases on one Postgres), and
#   - usher without sharding on one database (plain pooling), and
#   - Postgres directly (one database),
# interleaved round by round so drift on a noisy machine hits all alike.
#   SECS=10 ROUNDS=2 CLIENTS=50 PROTOCOL=simple benches/shard.sh
cd "$(dirname "$0")/.."
SECS=${SECS:-10}; ROUNDS=${ROUNDS:-2}; CLIENTS=${CLIENTS:-50}; PROTOCOL=${PROTOCOL:-simple}
source benches/lib.sh

PG=$(free_port)
start_primary "$PG"
psql_pg() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG" -U postgres "$@"; }
family_databases "$PG"

P_SHARD=$(free_port)
start_usher sharded "$(usher_header "$P_SHARD")
$(family_shards_toml "$PG")"
PID_SHARD=$LAST_PID
P_PLAIN=$(free_port)
start_usher plain "$(usher_header "$P_PLAIN")
[databases.app]
shards = [ { primary = \"127.0.0.1:$PG/app\" } ]"
PID_PLAIN=$LAST_PID
sleep 1

# The schema through usher runs on every shard; the families are routed one by one.
family_load_through "$P_SHARD"
echo "families per shard: $(for i in 0 1 2 3; do psql_pg -d "shard_$i" -Atc 'SELECT count(*) FROM bench_families'; done | paste -sd' ')" >&2

RESULTS="$WORK/results"
: > "$RESULTS"
ARGS=(-f benches/family.pgbench -M "$PROTOCOL" -c "$CLIENTS" -j 2 -T "$SECS")
for round in $(seq 1 "$ROUNDS"); do
  r=$(run_pgbench "$P_SHARD" "$PID_SHARD" "${ARGS[@]}"); echo "sharded $r" | tee -a "$RESULTS" >&2
  r=$(run_pgbench "$P_PLAIN" "$PID_PLAIN" "${ARGS[@]}"); echo "plain $r" | tee -a "$RESULTS" >&2
  r=$(run_pgbench "$PG" "" "${ARGS[@]}"); echo "direct $r" | tee -a "$RESULTS" >&2
done

avg() { awk -v w="$1" -v f="$2" '$1==w {s+=$f; n++} END {printf "%.1f", s/n}' "$RESULTS"; }
echo
echo "benches/family.pgbench -M $PROTOCOL, $CLIENTS clients, ${SECS}s runs, $ROUNDS interleaved rounds, pool 25, $(nproc) cores"
echo
echo "| target | TPS (mean) | avg latency ms | usher CPU µs/txn |"
echo "| --- | --- | --- | --- |"
echo "| usher, sharding on (4 shards) | $(avg sharded 2) | $(avg sharded 3) | $(avg sharded 4) |"
echo "| usher, one database | $(avg plain 2) | $(avg plain 3) | $(avg plain 4) |"
echo "| Postgres directly | $(avg direct 2) | $(avg direct 3) | - |"
awk '{t[$1]+=$2} END {printf "\nTPS ratio sharded/one-database usher: %.2f; sharded usher/direct: %.2f\n", t["sharded"]/t["plain"], t["sharded"]/t["direct"]}' "$RESULTS"
