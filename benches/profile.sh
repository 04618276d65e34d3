#!/usr/bin/env bash
# CPU instructions per transaction in user space, usher vs PgBouncer, counted by valgrind's
# callgrind: exact and repeatable where timings on a shared machine are not. Logins are
# excluded (the counters are zeroed once every client is connected), so SCRAM does not count.
#
#   benches/profile.sh                 # pgbench -S, 10 clients, simple and extended
#   MODES=simple CLIENTS=50 benches/profile.sh
#   USHER_BASE_BIN=/path/to/old/usher benches/profile.sh   # also an older build (before/after)
#
# Leaves the callgrind files in benches/profile/ for `callgrind_annotate --inclusive=yes`.
# Kernel time (send/recv, wakeups) is not counted: `perf record -g -p PID` shows that part.
cd "$(dirname "$0")/.."
MODES=${MODES:-simple extended}; CLIENTS=${CLIENTS:-10}; SECS=${SECS:-12}
source benches/lib.sh
command -v valgrind >/dev/null || {
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind >/dev/null
}
OUT=benches/profile
mkdir -p "$OUT"
chmod 777 "$OUT"

PG=$(free_port)
start_primary "$PG"
P_USHER=$(free_port)
echo "$(usher_header "$P_USHER")
[databases.app]
shards = [ { primary = \"127.0.0.1:$PG/app\" } ]" > "$WORK/usher.toml"
P_BOUNCER=$(free_port)
pgbouncer_ini "$P_BOUNCER" "$PG" "auth_type = scram-sha-256"
printf '"app" "secret"\n' | as_pg tee "$WORK/userlist.txt" >/dev/null

wait_port() { for _ in $(seq 1 120); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.5; done; echo "port $1 never opened" >&2; exit 1; }

# profile NAME PORT MODE CMD...: runs CMD under callgrind, pgbench against PORT, prints
# "NAME MODE instructions/txn".
profile() {
  local name=$1 port=$2 mode=$3; shift 3
  local file="$OUT/callgrind.$name.$mode"
  rm -f "$file"*
  "$@" valgrind --tool=callgrind --callgrind-out-file="$file" "${CMD[@]}" > "$WORK/vg.$name.log" 2>&1 &
  local vg=$!
  wait_port "$port"
  rm -f "$WORK"/pglog*
  (cd "$WORK" && PGPASSWORD=secret "$BIN/pgbench" -S -M "$mode" -c "$CLIENTS" -j 2 -T "$SECS" -n \
    --log --log-prefix=pglog -h 127.0.0.1 -p "$port" -U app app > "$WORK/pgbench.out" 2>&1) &
  local bench=$!
  sleep 4 # every client has logged in by now
  local zero; zero=$(date +%s.%N)
  callgrind_control -z "$name" > /dev/null 2>&1
  wait "$bench" || { cat "$WORK/pgbench.out" >&2; }
  callgrind_control -d "$name" > /dev/null 2>&1
  pkill -INT -f "callgrind-out-file=$file" 2>/dev/null || true; sleep 2
  pkill -f "callgrind-out-file=$file" 2>/dev/null || true; wait "$vg" 2>/dev/null || true
  local txns instr
  txns=$(cat "$WORK"/pglog* | awk -v z="$zero" '$5 + $6 / 1e6 >= z' | wc -l)
  # The dump after zeroing is the file with the highest part number.
  instr=$(ls "$file"* | sort -V | tail -1 | xargs grep -h '^summary:' | awk '{print $2}')
  awk -v n="$name" -v m="$mode" -v i="$instr" -v t="$txns" \
    'BEGIN { printf "%-10s %-9s %8.0f instructions/txn (%d transactions)\n", n, m, i / t, t }'
}

if [ -n "${USHER_BASE_BIN:-}" ]; then
  # Named usher-base so callgrind_control finds it by name.
  cp "$USHER_BASE_BIN" "$WORK/usher-base"
fi
for mode in $MODES; do
  CMD=(./target/release/usher --config "$WORK/usher.toml")
  profile usher "$P_USHER" "$mode" env USHER_LOG=warn
  if [ -n "${USHER_BASE_BIN:-}" ]; then
    CMD=("$WORK/usher-base" --config "$WORK/usher.toml")
    profile usher-base "$P_USHER" "$mode" env USHER_LOG=warn
  fi
  CMD=(pgbouncer "$WORK/pgbouncer.ini")
  profile pgbouncer "$P_BOUNCER" "$mode" as_pg
done
