#!/usr/bin/env bash
# Side-by-side pgbench -S through usher, PgBouncer and direct Postgres, interleaved in one run
# on the same machine (same pool settings: transaction mode, pool 25). Prints a table with TPS,
# average latency and the pooler's CPU time per transaction (user+sys from /proc/PID/stat).
#
#   benches/compare.sh                 # 10 and 100 clients, 10 s each, 2 rounds
#   CLIENTS="10 100 1000" SECS=20 ROUNDS=3 benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-"10 100"}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-2}
MODE=${MODE:-simple}

./scripts/install-deps.sh
cargo build --release --locked -q
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK=$(mktemp -d /tmp/usher-bench-XXXXXX)
chmod 755 "$WORK"; [ "$(id -u)" -eq 0 ] && chown postgres: "$WORK"
PG_PORT=$(free_port); USHER_PORT=$(free_port); BOUNCER_PORT=$(free_port)
cleanup() {
  [ -n "${USHER_PID:-}" ] && kill "$USHER_PID" 2>/dev/null || true
  [ -n "${BOUNCER_PID:-}" ] && kill "$BOUNCER_PID" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

as_pg "$BIN/initdb" -D "$WORK/pg" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
cat <<CONF | as_pg tee -a "$WORK/pg/postgresql.auto.conf" >/dev/null
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 1200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
CONF
printf 'local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' | as_pg tee "$WORK/pg/pg_hba.conf" >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
"$BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE ROLE app LOGIN PASSWORD 'secret'" -c "CREATE DATABASE app OWNER app"
PGPASSWORD=secret "$BIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U app app >/dev/null 2>&1

cat > "$WORK/usher.toml" <<TOML
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
USHER_LOG=warn ./target/release/usher --config "$WORK/usher.toml" &
USHER_PID=$!

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
BOUNCER_PID=$!
sleep 1
BOUNCER_PID=$(pgrep -f "^pgbouncer $WORK/pgbouncer.ini" | head -1)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
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
      before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
      out=$(PGPASSWORD=secret "$BIN/pgbench" -S -M "$MODE" -n -c "$c" -j 2 -T "$SECS" -h 127.0.0.1 -p "$port" -U app app 2>&1) || { echo "$out" >&2; exit 1; }
      after=0; [ -n "$pid" ] && after=$(cpu_ticks "$pid")
      tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
      lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
      xacts=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
      cpu_us=$(awk -v a="$after" -v b="$before" -v t="$TICK" -v x="$xacts" 'BEGIN { if (x > 0 && a > b) printf "%.1f", (a - b) / t * 1e6 / x; else print "-" }')
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$target" "$tps" "$lat" "$cpu_us" | tee -a "$RESULTS" >&2
    done
  done
done

echo
echo "pgbench -S -M $MODE, ${SECS}s per run, $ROUNDS interleaved rounds, pool 25 (transaction mode), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| clients | target | TPS (median) | avg latency ms | pooler CPU µs/txn | TPS vs PgBouncer |"
echo "| --- | --- | --- | --- | --- | --- |"
for c in $CLIENTS; do
  median() { awk -F'\t' -v c="$c" -v t="$1" -v f="$2" '$2==c && $3==t {print $f}' "$RESULTS" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  bouncer=$(median pgbouncer 4)
  for t in usher pgbouncer direct; do
    tps=$(median "$t" 4)
    ratio=$(awk -v a="$tps" -v b="$bouncer" 'BEGIN { printf "%.2f", a / b }')
    echo "| $c | $t | $tps | $(median "$t" 5) | $(median "$t" 6) | $ratio |"
  done
done
