#!/usr/bin/env bash
# One command for a newcomer: installs what is missing, builds usher, starts a local Postgres
# topology (a primary, a streaming replica, and shard databases) and runs usher in front of it
# on 127.0.0.1:6432. Ctrl-C stops usher; `scripts/dev-up.sh stop` stops the Postgres servers.
#
#   primary   127.0.0.1:15432  databases app, shard_0 .. shard_3 (user app / secret)
#   replica   127.0.0.1:15433  streaming replica of the primary (pg_basebackup -R)
#   usher     127.0.0.1:6432   DATABASE_URL=postgres://app:secret@127.0.0.1:6432/app
#                              sharded: postgres://app:secret@127.0.0.1:6432/learning
#                              (families over shard_0..3, schema from migrations/)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=${USHER_DEV_DIR:-/tmp/usher-dev}
PRIMARY_PORT=${PRIMARY_PORT:-15432}
REPLICA_PORT=${REPLICA_PORT:-15433}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pgbin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }

start_one() { # data_dir
  if ! as_pg "$(pgbin)/pg_ctl" -D "$1" status >/dev/null 2>&1; then
    as_pg "$(pgbin)/pg_ctl" -D "$1" -l "$1.log" -w start >/dev/null
  fi
}

if [ "${1:-}" = "stop" ]; then
  for d in "$ROOT/replica" "$ROOT/primary"; do
    [ -d "$d" ] && as_pg "$(pgbin)/pg_ctl" -D "$d" -m fast stop || true
  done
  exit 0
fi

./scripts/install-deps.sh
cargo build --release --locked
BIN=$(pgbin)

if [ ! -f "$ROOT/primary/PG_VERSION" ]; then
  echo "creating the topology in $ROOT" >&2
  mkdir -p "$ROOT"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$ROOT"
  as_pg "$BIN/initdb" -D "$ROOT/primary" -U postgres -A trust -E UTF8 --locale=C >/dev/null
  cat > "$ROOT/primary/pg_hba.conf" <<HBA
local all all trust
host replication all 127.0.0.1/32 trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
  cat >> "$ROOT/primary/postgresql.auto.conf" <<CONF
port = $PRIMARY_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$ROOT'
wal_level = replica
max_wal_senders = 8
wal_keep_size = '1GB'
hot_standby = on
max_connections = 300
shared_preload_libraries = 'pg_stat_statements'
CONF
  start_one "$ROOT/primary"
  psql_p() { "$BIN/psql" -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres "$@"; }
  psql_p -c "CREATE ROLE app LOGIN PASSWORD 'secret'"
  for db in app shard_0 shard_1 shard_2 shard_3; do psql_p -c "CREATE DATABASE $db OWNER app"; done
  as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$ROOT/replica" -R -X stream -c fast
  echo "port = $REPLICA_PORT" | as_pg tee -a "$ROOT/replica/postgresql.auto.conf" >/dev/null
fi
# Writes across shards commit with two-phase commit (PREPARE TRANSACTION); a replica needs
# at least the primary's setting. Added to topologies made before it was needed, too.
RESTART=
for d in "$ROOT/primary" "$ROOT/replica"; do
  if ! grep -q '^max_prepared_transactions' "$d/postgresql.auto.conf"; then
    echo "max_prepared_transactions = 50" | as_pg tee -a "$d/postgresql.auto.conf" >/dev/null
    RESTART=1
  fi
done
start_one "$ROOT/primary"
start_one "$ROOT/replica"
# The setting needs a restart of servers that were already running (primary first: a
# replica may not have less than its primary).
if [ -n "$RESTART" ]; then
  for d in "$ROOT/primary" "$ROOT/replica"; do
    as_pg "$(pgbin)/pg_ctl" -D "$d" -l "$d.log" -w -m fast restart >/dev/null
  done
fi

cat > "$ROOT/usher.toml" <<TOML
# Written by scripts/dev-up.sh; see config/usher.toml and README.md for every key.
[general]
listen = "127.0.0.1:6432"
pool_mode = "transaction"
default_pool_size = 25
min_pool_size = 2
metrics_listen = "127.0.0.1:9930"
two_phase_log = "$ROOT/two_phase.log"

[admin]
user = "admin"
password = "admin"

[[users]]
name = "app"
password = "secret"

[databases.app]
read_write_split = true
shards = [
  { primary = "127.0.0.1:$PRIMARY_PORT/app", replicas = ["127.0.0.1:$REPLICA_PORT/app"] },
]

# The learning platform, sharded by family over four databases (see config/usher.sharded.toml).
[databases.learning]
read_write_split = true
shards = [
  { primary = "127.0.0.1:$PRIMARY_PORT/shard_0", replicas = ["127.0.0.1:$REPLICA_PORT/shard_0"] },
  { primary = "127.0.0.1:$PRIMARY_PORT/shard_1", replicas = ["127.0.0.1:$REPLICA_PORT/shard_1"] },
  { primary = "127.0.0.1:$PRIMARY_PORT/shard_2" },
  { primary = "127.0.0.1:$PRIMARY_PORT/shard_3" },
]

[databases.learning.sharding]
hasher = "xxh3"
key_type = "uuid"
default_shard = 0
two_phase_commit = true
tables = [
  { name = "families", column = "id" },
  { name = "children", column = "family_id" },
  { name = "user_progress", column = "family_id" },
]
global_tables = ["lessons"]
TOML

# The schema of migrations/ on every shard (a no-op once applied).
"$REPO/target/release/usher" --config "$ROOT/usher.toml" migrate --database learning --dir "$REPO/migrations"

echo "usher on 127.0.0.1:6432 — try: psql postgres://app:secret@127.0.0.1:6432/app" >&2
echo "sharded:               psql postgres://app:secret@127.0.0.1:6432/learning" >&2
echo "admin console:         psql postgres://admin:admin@127.0.0.1:6432/usher   (SHOW POOLS;)" >&2
echo "metrics:               curl http://127.0.0.1:9930/metrics" >&2
exec "$REPO/target/release/usher" --config "$ROOT/usher.toml"
