#!/usr/bin/env bash
# Side-by-side pgbench -S through usher, PgBouncer and direct Postgres, interleaved in one run
# on the same machine (same pool settings: transaction mode, pool 25). Prints TPS, average
# latency and the pooler's CPU time per transaction (user+sys from /proc/PID/stat).
#
#   benches/compare.sh                 # 10 and 100 clients, 10 s each, 2 rounds
#   CLIENTS="10 100 1000" SECS=20 ROUNDS=3 benches/compare.sh
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-"10 100"}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-2}
MODE=${MODE:-simple}
source benches/lib.sh

PG_PORT=$(free_port); USHER_PORT=$(free_port); BOUNCER_PORT=$(free_port)
start_primary "$PG_PORT"
start_usher usher "$(cat <<TOML
[general]
listen = "127.0.0.1:$USHER_PORT"
pool_mode = "transaction"
max_client_conn = 5000
default_pool_size = 25
[[users]]
name = "app"
password = "secret"
[databases.app]
shards = [ { primary = "127.0.0.1:$PG_PORT/app" } ]
TOML
)"
USHER_PID=$LAST_PID

cat <<INI | as_pg tee "$WORK/pgbouncer.ini" >/dev/null
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = 25
max_client_conn = 5000
logfile = $WORK/pgbouncer.log
INI
echo '"app" "secret"' | as_pg tee "$WORK/userlist.txt" >/dev/null
as_pg pgbouncer "$WORK/pgbouncer.ini" &
PIDS+=($!)
sleep 1
BOUNCER_PID=$(pgrep -f "^pgbouncer $WORK/pgbouncer.ini" | head -1)
PIDS+=("$BOUNCER_PID")

RESULTS="$WORK/results.tsv"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do
    for target in usher pgbouncer direct; do
      case $target in
        usher) port=$USHER_PORT; pid=$USHER_PID ;;
        pgbouncer) port=$BOUNCER_PORT; pid=$BOUNCER_PID ;;
        direct) port=$PG_PORT; pid= ;;
      esac
      read -r tps lat cpu < <(run_pgbench "$port" "$pid" -S -M "$MODE" -c "$c" -j 2 -T "$SECS")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$target" "$tps" "$lat" "$cpu" | tee -a "$RESULTS" >&2
    done
  done
done

echo
echo "pgbench -S -M $MODE, ${SECS}s per run, $ROUNDS interleaved rounds, pool 25 (transaction mode), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| clients | target | TPS (mean) | avg latency ms | pooler CPU µs/txn | TPS vs PgBouncer |"
echo "| --- | --- | --- | --- | --- | --- |"
for c in $CLIENTS; do
  mean() { awk -F'\t' -v c="$c" -v t="$1" -v f="$2" '$2==c && $3==t && $f!="-" {s+=$f; n++} END {if (n) printf "%.1f", s/n; else print "-"}' "$RESULTS"; }
  bouncer=$(mean pgbouncer 4)
  for t in usher pgbouncer direct; do
    tps=$(mean "$t" 4)
    echo "| $c | $t | $tps | $(mean "$t" 5) | $(mean "$t" 6) | $(awk -v a="$tps" -v b="$bouncer" 'BEGIN { printf "%.2f", a / b }') |"
  done
done
