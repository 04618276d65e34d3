# Shared setup for the benchmark scripts (sourced): a throwaway Postgres topology on free
# loopback ports, run as the postgres OS user when root, removed on exit.
set -euo pipefail

./scripts/install-deps.sh
cargo build --release --locked -q
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# postgres_ticks: user+sys ticks of every postgres process on the machine so far, including
# backends that already exited (counted in their postmaster's cutime/cstime once reaped).
postgres_ticks() { cat /proc/[0-9]*/stat 2>/dev/null | awk '$2 == "(postgres)" {t += $14 + $15 + $16 + $17} END {print t + 0}'; }
TICK=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/usher-bench-XXXXXX)
chmod 755 "$WORK"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$WORK"; fi
PIDS=()
DATADIRS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for d in "${DATADIRS[@]:-}"; do [ -n "$d" ] && as_pg "$BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_primary PORT: initdb + start, role app/secret, database app, pgbench tables (scale 10).
start_primary() {
  local port=$1 data="$WORK/primary"
  as_pg "$BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
  cat <<CONF | as_pg tee -a "$data/postgresql.auto.conf" >/dev/null
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 1500
shared_buffers = 256MB
fsync = off
synchronous_commit = off
wal_level = replica
max_wal_senders = 8
wal_keep_size = '1GB'
max_prepared_transactions = 100
CONF
  printf 'local all all trust\nhost replication all 127.0.0.1/32 trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' | as_pg tee "$data/pg_hba.conf" >/dev/null
  as_pg "$BIN/pg_ctl" -D "$data" -l "$WORK/primary.log" -w start >/dev/null
  DATADIRS+=("$data")
  "$BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE ROLE app LOGIN PASSWORD 'secret'" -c "CREATE DATABASE app OWNER app"
  PGPASSWORD=secret "$BIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$port" -U app app >/dev/null 2>&1
}

# start_replica PRIMARY_PORT PORT: pg_basebackup -R + start.
start_replica() {
  local primary=$1 port=$2 data="$WORK/replica_$2"
  as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$data" -R -X stream -c fast
  echo "port = $port" | as_pg tee -a "$data/postgresql.auto.conf" >/dev/null
  as_pg "$BIN/pg_ctl" -D "$data" -l "$WORK/replica_$port.log" -w start >/dev/null
  DATADIRS+=("$data")
}

# replica_caught_up PRIMARY_PORT REPLICA_PORT: waits (up to 60 s) until the replica has replayed
# everything the primary wrote, so a run that reads from it does not compete with WAL replay.
replica_caught_up() {
  local lsn
  lsn=$("$BIN/psql" -X -At -h 127.0.0.1 -p "$1" -U postgres -c "SELECT pg_current_wal_lsn()" postgres)
  for _ in $(seq 1 600); do
    [ "$("$BIN/psql" -X -At -h 127.0.0.1 -p "$2" -U postgres -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'" postgres)" = t ] && return 0
    sleep 0.1
  done
  echo "replica on port $2 still behind $lsn after 60 s" >&2
}

# usher_header PORT: [general] and the app user, shared by the benchmark configs.
usher_header() {
  cat <<TOML
[general]
listen = "127.0.0.1:$1"
default_pool_size = 25
max_client_conn = 2000
[[users]]
name = "app"
password = "secret"
TOML
}

# pgbouncer_ini PORT PG_PORT [LINE...]: writes $WORK/pgbouncer.ini, PgBouncer with the
# benchmark's pool settings (transaction mode, pool 25) serving database app of the Postgres on
# PG_PORT, users from $WORK/userlist.txt, plus each LINE under [pgbouncer] (auth_type, ...).
pgbouncer_ini() {
  local port=$1 pg=$2; shift 2
  {
    cat <<INI
[databases]
app = host=127.0.0.1 port=$pg dbname=app user=app password=secret
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = 25
logfile = $WORK/pgbouncer.log
INI
    printf '%s\n' "$@"
  } | as_pg tee "$WORK/pgbouncer.ini" >/dev/null
}

# start_usher NAME TOML: runs target/release/usher with that config; sets LAST_PID.
start_usher() { # name toml [binary]
  echo "$2" > "$WORK/$1.toml"
  USHER_LOG=warn "${3:-./target/release/usher}" --config "$WORK/$1.toml" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  sleep 0.5
}

# run_pgbench PORT PID ARGS...: prints "tps latency_ms cpu_us_per_txn" (cpu "-" without PID).
run_pgbench() {
  local port=$1 pid=$2; shift 2
  local before=0 after=0 out
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$(PGPASSWORD=secret "$BIN/pgbench" "$@" -n -h 127.0.0.1 -p "$port" -U app app 2>&1) || { echo "$out" >&2; return 1; }
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local tps lat xacts
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  xacts=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  local cpu
  cpu=$(awk -v a="$after" -v b="$before" -v t="$TICK" -v x="$xacts" 'BEGIN { if (x > 0 && a > b) printf "%.1f", (a - b) / t * 1e6 / x; else print "-" }')
  echo "$tps $lat $cpu"
}

# family_databases PORT: shard_0..shard_3 next to app, and the family-script tables with
# 10,000 families in app (the one-database baseline). Needs psql_pg defined by the caller.
family_databases() {
  local port=$1
  for i in 0 1 2 3; do psql_pg -c "CREATE DATABASE shard_$i OWNER app"; done
  PGPASSWORD=secret "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U app app -f benches/family_schema.sql 2>/dev/null
  PGPASSWORD=secret "$BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U app app \
    -c "INSERT INTO bench_families (id, name) SELECT g, 'family ' || g FROM generate_series(1, 10000) g"
}

# family_shards_toml PORT: [databases.app] split over shard_0..shard_3 on that Postgres.
family_shards_toml() {
  cat <<TOML
[databases.app]
shards = [
  { primary = "127.0.0.1:$1/shard_0" }, { primary = "127.0.0.1:$1/shard_1" },
  { primary = "127.0.0.1:$1/shard_2" }, { primary = "127.0.0.1:$1/shard_3" },
]
[databases.app.sharding]
key_type = "bigint"
tables = [ { name = "bench_families", column = "id" }, { name = "bench_progress", column = "family_id" } ]
TOML
}

# family_load_through PORT: the family tables through a sharded usher (DDL runs on every
# shard) and 10,000 families routed one by one.
family_load_through() {
  PGPASSWORD=secret "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app app -f benches/family_schema.sql 2>/dev/null
  seq 1 10000 | awk '{ printf "INSERT INTO bench_families (id, name) VALUES (%d, '"'"'family %d'"'"');\n", $1, $1 }' \
    | PGPASSWORD=secret "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app app >/dev/null
}
