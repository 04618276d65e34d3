#!/usr/bin/env bash
# The side-by-side benchmark: usher vs PgBouncer (Debian package, same pool settings:
# transaction mode, pool 25) vs direct Postgres, on a throwaway local topology (a primary, a
# streaming replica, four shard databases), runs interleaved target by target so drift on a
# noisy machine hits all alike. Writes benches/RESULTS.md (date, machine, exact commands,
# every run, and the usher/PgBouncer ratios against the targets).
#
#   benches/bench.sh                       # SECS=10 ROUNDS=1, about 10 minutes
#   SECS=20 ROUNDS=2 benches/bench.sh      # steadier figures
#   USHER_BASE_BIN=/path/to/old/usher ONLY_S=1 benches/bench.sh
#       # also an older usher build, interleaved in the -S runs (before/after a change, in
#       # the same run); ONLY_S=1 skips everything but the -S runs and writes
#       # benches/RESULTS-S.md instead of RESULTS.md
#
# Per run, over its steady window (every client logged in and running): TPS, average and p99
# latency (pgbench --log), the pooler's and Postgres' CPU time per transaction (user+sys from
# /proc/PID/stat), the share of the machine left idle, and the pooler's peak RSS during the
# run (VmHWM after clear_refs).
# Also: RSS per idle client with IDLE (10,000) idle connections, and COPY of COPY_MB (1024) MB
# to STDOUT through usher vs direct (throughput and usher's peak RSS).
cd "$(dirname "$0")/.."
SECS=${SECS:-10}; ROUNDS=${ROUNDS:-1}; IDLE=${IDLE:-10000}; COPY_MB=${COPY_MB:-1024}
source benches/lib.sh
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PG=$(free_port); REP=$(free_port)
start_primary "$PG"
start_replica "$PG" "$REP"
psql_pg() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG" -U postgres "$@"; }
family_databases "$PG"

header() { # port: the same [general] for every usher here
  cat <<TOML
[general]
listen = "127.0.0.1:$1"
pool_mode = "transaction"
default_pool_size = 25
max_client_conn = $((IDLE + 2000))
[[users]]
name = "app"
password = "secret"
[[users]]
name = "idle"
auth_type = "trust"
server_user = "app"
server_password = "secret"
TOML
}
P_USHER=$(free_port)
start_usher usher "$(header "$P_USHER")
[databases.app]
shards = [ { primary = \"127.0.0.1:$PG/app\" } ]"
PID_USHER=$LAST_PID
P_SPLIT=$(free_port)
start_usher split "$(header "$P_SPLIT")
[databases.app]
read_write_split = true
shards = [ { primary = \"127.0.0.1:$PG/app\", replicas = [\"127.0.0.1:$REP/app\"] } ]"
PID_SPLIT=$LAST_PID
P_SHARD=$(free_port)
start_usher sharded "$(header "$P_SHARD")
$(family_shards_toml "$PG")"
PID_SHARD=$LAST_PID
USHER_BASE_BIN=${USHER_BASE_BIN:-}; ONLY_S=${ONLY_S:-}
if [ -n "$USHER_BASE_BIN" ]; then
  P_BASE=$(free_port)
  start_usher usher-base "$(header "$P_BASE")
[databases.app]
shards = [ { primary = \"127.0.0.1:$PG/app\" } ]" "$USHER_BASE_BIN"
  PID_BASE=$LAST_PID
fi

P_BOUNCER=$(free_port)
pgbouncer_ini "$P_BOUNCER" "$PG" "auth_type = hba" "auth_hba_file = $WORK/pgbouncer_hba.conf" \
  "max_client_conn = $((IDLE + 2000))"
printf '"app" "secret"\n"idle" ""\n' | as_pg tee "$WORK/userlist.txt" >/dev/null
printf 'host all idle 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' | as_pg tee "$WORK/pgbouncer_hba.conf" >/dev/null
if [ "$(id -u)" -eq 0 ]; then
  # Started as root so it keeps this shell's file limit, then it drops to the postgres user.
  pgbouncer -u postgres "$WORK/pgbouncer.ini" > /dev/null 2>&1 &
else
  pgbouncer "$WORK/pgbouncer.ini" > /dev/null 2>&1 &
fi
PIDS+=($!)
sleep 1
PID_BOUNCER=$(pgrep -f "pgbouncer.* $WORK/pgbouncer.ini" | head -1)
PIDS+=("$PID_BOUNCER")

# The sharded schema through usher (DDL runs on every shard), families routed one by one.
family_load_through "$P_SHARD"
sleep 2

peak_reset() { [ -n "$1" ] && echo 5 > "/proc/$1/clear_refs" 2>/dev/null || true; }
peak_kib() { [ -n "$1" ] && awk '/^VmHWM/ {print $2}' "/proc/$1/status" || echo "-"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# cpu_times: "idle total" jiffies of the whole machine (idle + iowait, every state).
cpu_times() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t}' /proc/stat; }
# sample PID: every 0.5 s, "epoch pooler_ticks postgres_ticks idle_jiffies total_jiffies".
sample() {
  while :; do
    echo "$(date +%s.%N) $([ -n "$1" ] && cpu_ticks "$1" || echo 0) $(postgres_ticks) $(cpu_times)"
    sleep 0.5
  done
}

# measure PORT PID ARGS...: "tps avg_ms p99_ms cpu_us_per_txn peak_rss_mib postgres_cpu_us_per_txn
# machine_idle_percent", all but the peak RSS over the steady window: from the moment every
# client has finished its first transaction (logins, SCRAM included, are over) to the moment
# the first pgbench thread stopped. At 1,000 clients the logins take seconds and cost each
# pooler differently, so counting them would skew CPU per transaction and idle time.
measure() {
  local port=$1 pid=$2; shift 2
  rm -f "$WORK"/pglog*
  peak_reset "$pid"
  sample "$pid" > "$WORK/samples" &
  local sampler=$! out
  out=$(cd "$WORK" && PGPASSWORD=secret "$BIN/pgbench" "$@" -n --log --log-prefix=pglog -h 127.0.0.1 -p "$port" -U app app 2>&1) || {
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    echo "$out" >&2; echo "- - - - - - -"; return
  }
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  local window peak s0 p0 g0 i0 a0 s1 p1 g1 i1 a1
  # t0: every client's first transaction done; t1: the earliest last transaction of a thread.
  window=$(awk '{t = $5 + $6 / 1e6
      if (!($1 in first) || t < first[$1]) first[$1] = t
      if (t > last[FILENAME]) last[FILENAME] = t}
    END {t0 = 0; for (c in first) if (first[c] > t0) t0 = first[c]
      t1 = 1e18; for (f in last) if (last[f] < t1) t1 = last[f]
      printf "%.6f %.6f\n", t0, t1}' "$WORK"/pglog*)
  # The samples that bound the window, then the transactions inside them.
  read -r s0 p0 g0 i0 a0 s1 p1 g1 i1 a1 < <(awk -v w="$window" 'BEGIN {split(w, t, " ")}
      $1 >= t[1] && !a {a = $0} $1 <= t[2] {b = $0}
      END {print a, b}' "$WORK/samples")
  if [ -z "${s1:-}" ] || awk -v a="$s0" -v b="$s1" 'BEGIN {exit !(b - a < 1)}'; then
    echo "steady window too short ($window; samples $s0 .. ${s1:-none})" >&2
    echo "- - - - - - -"; return
  fi
  peak=$(peak_kib "$pid"); [ "$peak" != "-" ] && peak=$(awk -v k="$peak" 'BEGIN {printf "%.1f", k/1024}')
  awk -v s0="$s0" -v s1="$s1" '{t = $5 + $6 / 1e6} t >= s0 && t <= s1 {print $3}' "$WORK"/pglog* | sort -n |
    awk -v s0="$s0" -v s1="$s1" -v p0="$p0" -v p1="$p1" -v g0="$g0" -v g1="$g1" -v i0="$i0" -v i1="$i1" \
        -v a0="$a0" -v a1="$a1" -v tick="$TICK" -v pid="$pid" -v peak="$peak" '
      {v[NR] = $1; sum += $1}
      END {
        n = NR; if (n == 0) {print "- - - - - - -"; exit}
        i = int(n * 0.99); if (i < 1) i = 1
        tps = n / (s1 - s0)
        cpu = (pid != "" && p1 > p0) ? sprintf("%.1f", (p1 - p0) / tick * 1e6 / n) : "-"
        # What the servers spent per transaction: a pooler changes this too (wake-ups, batching).
        pg = sprintf("%.1f", (g1 - g0) / tick * 1e6 / n)
        # Idle CPU left on the machine: near 0 when the box itself (pgbench + pooler + Postgres)
        # is the limit, well above 0 when one single-threaded process is.
        idle = (a1 > a0) ? sprintf("%.0f", (i1 - i0) * 100 / (a1 - a0)) : "-"
        printf "%.1f %.3f %.2f %s %s %s %s\n", tps, sum / n / 1000, v[i] / 1000, cpu, peak, pg, idle
      }'
}

RESULTS="$WORK/results"
: > "$RESULTS"
run() { # case target port pid args...
  local case=$1 target=$2 port=$3 pid=$4; shift 4
  local r; r=$(measure "$port" "$pid" "$@")
  echo "$case $target $r" | tee -a "$RESULTS" >&2
}
for round in $(seq 1 "$ROUNDS"); do
  for mode in simple extended; do
    for c in 10 100 1000; do
      j=$(( c < 4 ? c : 4 ))
      # 1,000 logins take seconds: those runs get twice the time so most of it is load.
      t=$(( c >= 1000 ? SECS * 2 : SECS ))
      run "S-$mode-$c" usher "$P_USHER" "$PID_USHER" -S -M "$mode" -c "$c" -j "$j" -T "$t"
      if [ -n "$USHER_BASE_BIN" ]; then
        run "S-$mode-$c" usher-base "$P_BASE" "$PID_BASE" -S -M "$mode" -c "$c" -j "$j" -T "$t"
      fi
      run "S-$mode-$c" pgbouncer "$P_BOUNCER" "$PID_BOUNCER" -S -M "$mode" -c "$c" -j "$j" -T "$t"
      run "S-$mode-$c" direct "$PG" "" -S -M "$mode" -c "$c" -j "$j" -T "$t"
    done
  done
  [ -n "$ONLY_S" ] && continue
  run S-prepared-100 usher "$P_USHER" "$PID_USHER" -S -M prepared -c 100 -j 4 -T "$SECS"
  run S-prepared-100 direct "$PG" "" -S -M prepared -c 100 -j 4 -T "$SECS"
  run N-simple-100 usher "$P_USHER" "$PID_USHER" -N -M simple -c 100 -j 4 -T "$SECS"
  run N-simple-100 pgbouncer "$P_BOUNCER" "$PID_BOUNCER" -N -M simple -c 100 -j 4 -T "$SECS"
  run N-simple-100 direct "$PG" "" -N -M simple -c 100 -j 4 -T "$SECS"
  # The -N runs left WAL for the replica to replay; the split runs start once it has, and
  # swap order every round so drift does not favour one of them.
  replica_caught_up "$PG" "$REP"
  if [ $((round % 2)) -eq 1 ]; then split_order="plain split"; else split_order="split plain"; fi
  for v in $split_order; do
    if [ "$v" = plain ]; then
      run split-S-100 usher-plain "$P_USHER" "$PID_USHER" -S -M simple -c 100 -j 4 -T "$SECS"
    else
      run split-S-100 usher-split "$P_SPLIT" "$PID_SPLIT" -S -M simple -c 100 -j 4 -T "$SECS"
    fi
  done
  run family-100 usher-one-db "$P_USHER" "$PID_USHER" -f "$PWD/benches/family.pgbench" -M simple -c 100 -j 4 -T "$SECS"
  run family-100 usher-4-shards "$P_SHARD" "$PID_SHARD" -f "$PWD/benches/family.pgbench" -M simple -c 100 -j 4 -T "$SECS"
done

# COPY streaming: COPY_MB of 1 KB rows to STDOUT, through usher and directly.
if [ -n "$ONLY_S" ]; then COPY_MB=0; IDLE=0; fi
ROWS=$((COPY_MB * 1024))
copy_secs() { # port
  local t0 t1
  t0=$(date +%s.%N)
  PGPASSWORD=secret "$BIN/psql" -X -q -h 127.0.0.1 -p "$1" -U app app \
    -c "COPY (SELECT repeat('x', 1023) FROM generate_series(1, $ROWS)) TO STDOUT" > /dev/null
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}'
}
COPY_DIRECT=$(copy_secs "$PG")
COPY_BASE=$(awk -v k="$(rss_kib "$PID_USHER")" 'BEGIN {printf "%.1f", k/1024}')
peak_reset "$PID_USHER"
COPY_USHER=$(copy_secs "$P_USHER")
COPY_PEAK=$(awk -v k="$(peak_kib "$PID_USHER")" 'BEGIN {printf "%.1f", k/1024}')
echo "copy: usher ${COPY_USHER}s (RSS ${COPY_BASE} MiB before, peak ${COPY_PEAK} MiB), direct ${COPY_DIRECT}s" >&2

# Idle clients: RSS per idle connection (trust logins, held open, nothing sent).
idle_rss() { # port pid
  local port=$1 pid=$2 base after
  base=$(rss_kib "$pid")
  python3 - "$port" "$IDLE" > "$WORK/idle.out" 2>&1 <<'PY' &
import asyncio, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
def startup():
    body = struct.pack("!I", 196608) + b"user\0idle\0database\0app\0\0"
    return struct.pack("!I", len(body) + 4) + body
async def one(sem, held):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(startup())
        buf = b""
        while True:
            chunk = await r.read(4096)
            if not chunk:
                raise SystemExit("closed: " + repr(buf[:200]))
            buf += chunk
            if b"Z\0\0\0\x05I" in buf:
                break
        held.append((r, w))
async def main():
    sem, held = asyncio.Semaphore(200), []
    await asyncio.gather(*(one(sem, held) for _ in range(n)))
    print("ok", len(held), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
PY
  local opener=$!
  for _ in $(seq 1 600); do grep -q '^ok' "$WORK/idle.out" 2>/dev/null && break; kill -0 "$opener" 2>/dev/null || break; sleep 0.2; done
  sleep 1
  after=$(rss_kib "$pid")
  if grep -q '^ok' "$WORK/idle.out"; then
    awk -v a="$after" -v b="$base" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) * 1024 / n / 1024 }'
  else
    echo "failed ($(head -c 200 "$WORK/idle.out"))"
  fi
  kill "$opener" 2>/dev/null; wait "$opener" 2>/dev/null
  sleep 1
}
if [ "$IDLE" -gt 0 ]; then
  IDLE_USHER=$(idle_rss "$P_USHER" "$PID_USHER")
  IDLE_BOUNCER=$(idle_rss "$P_BOUNCER" "$PID_BOUNCER")
else
  IDLE_USHER=-; IDLE_BOUNCER=-
fi
echo "idle: usher $IDLE_USHER KiB/client, pgbouncer $IDLE_BOUNCER KiB/client" >&2

# Report.
avg() { awk -v c="$1" -v t="$2" -v f="$3" '$1==c && $2==t && $f!="-" {s+=$f; n++} END {if (n) printf "%.1f", s/n; else print "-"}' "$RESULTS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2f", a / b; else print "-" }'; }
REPORT="$WORK/report.md"
{
  echo "# Benchmark results"
  echo
  echo "Written by \`benches/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Re-run: \`SECS=$SECS ROUNDS=$ROUNDS benches/bench.sh\`."
  echo
  echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; shared and noisy, so the ratios (same run, interleaved) are the headline, not absolute numbers."
  echo "- PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') (fsync off, primary + streaming replica on the same machine), $(pgbouncer --version | head -1), usher $(./target/release/usher --version | awk '{print $2}') (release build)."
  echo "- Pools: transaction mode, pool size 25, for usher and PgBouncer alike. pgbench scale 10, ${SECS} s per run, $ROUNDS round(s), targets interleaved usher → PgBouncer → direct."
  echo "- Commands: \`pgbench -S|-N -M simple|extended|prepared -c C -j min(C,4) -T $SECS -n --log\`; the family runs use \`-f benches/family.pgbench\`. Every figure but peak RSS is taken over each run's steady window, from the moment every client finished its first transaction (logins done) to the end, sampled every 0.5 s: TPS = transactions in it ÷ its length; CPU = user+sys of the pooler process ÷ transactions (Postgres CPU: the same for every postgres process on the machine; machine idle: the share of all cores left idle); peak RSS = VmHWM after resetting it with clear_refs."
  echo
  echo "## Targets (usher / PgBouncer in the same run)"
  echo
  echo "| measure | target | measured | met |"
  echo "| --- | --- | --- | --- |"
  cpu_u=$(avg S-simple-100 usher 6); cpu_b=$(avg S-simple-100 pgbouncer 6)
  echo "| pooler CPU per transaction, -S simple, 100 clients | usher ≤ PgBouncer | $cpu_u vs $cpu_b µs ($(ratio "$cpu_u" "$cpu_b")×) | $(awk -v a="$cpu_u" -v b="$cpu_b" 'BEGIN {print (a <= b) ? "yes" : "no"}') |"
  for c in 100 1000; do
    for m in simple extended; do
      r=$(ratio "$(avg "S-$m-$c" usher 3)" "$(avg "S-$m-$c" pgbouncer 3)")
      echo "| TPS, -S $m, $c clients | ≥ 1.1× PgBouncer | ${r}× | $(awk -v r="$r" 'BEGIN {print (r >= 1.1) ? "yes" : "no"}') |"
    done
  done
  p_u=$(avg S-simple-100 usher 5); p_b=$(avg S-simple-100 pgbouncer 5)
  echo "| p99 latency, -S simple, 100 clients | usher ≤ PgBouncer | $p_u vs $p_b ms | $(awk -v a="$p_u" -v b="$p_b" 'BEGIN {print (a <= b) ? "yes" : "no"}') |"
  r=$(ratio "$(avg split-S-100 usher-split 3)" "$(avg split-S-100 usher-plain 3)")
  echo "| TPS with read/write split on vs plain pooling (same primary) | ≥ 0.9 | ${r}× | $(awk -v r="$r" 'BEGIN {print (r >= 0.9) ? "yes" : "no"}') |"
  echo "| route decision, cache hit | ≤ 1 µs | see \`cargo bench --bench routing\` | |"
  echo "| RSS per idle client ($IDLE idle connections) | ≤ 16 KiB | usher $IDLE_USHER KiB, PgBouncer $IDLE_BOUNCER KiB | $(awk -v a="$IDLE_USHER" 'BEGIN {print (a+0 > 0 && a <= 16) ? "yes" : "no"}') |"
  cr=$(ratio "$COPY_DIRECT" "$COPY_USHER")
  echo "| COPY TO $COPY_MB MB throughput | ≥ 0.8× direct, usher RSS < 64 MiB | ${cr}× ($COPY_USHER s vs $COPY_DIRECT s), usher RSS $COPY_BASE MiB before, peak $COPY_PEAK MiB | $(awk -v r="$cr" -v m="$COPY_PEAK" 'BEGIN {print (r >= 0.8 && m < 64) ? "yes" : "no"}') |"
  echo
  echo "## Pooler CPU per transaction against PgBouncer, -S"
  echo
  echo "| case | usher µs/txn | usher ÷ PgBouncer |$([ -n "$USHER_BASE_BIN" ] && echo " older usher µs/txn | older ÷ PgBouncer |") PgBouncer µs/txn |"
  echo "| --- | --- | --- |$([ -n "$USHER_BASE_BIN" ] && echo " --- | --- |") --- |"
  for mode in simple extended; do
    for c in 10 100 1000; do
      u=$(avg "S-$mode-$c" usher 6); b=$(avg "S-$mode-$c" pgbouncer 6)
      older=""
      if [ -n "$USHER_BASE_BIN" ]; then
        o=$(avg "S-$mode-$c" usher-base 6); older=" $o | $(ratio "$o" "$b") |"
      fi
      echo "| S-$mode-$c | $u | $(ratio "$u" "$b") |$older $b |"
    done
  done
  [ -n "$USHER_BASE_BIN" ] && echo && echo "Older usher: \`$USHER_BASE_BIN\` ($("$USHER_BASE_BIN" --version | awk '{print $2}')), same config, interleaved with the others."
  echo
  echo "## Every run (means over rounds)"
  echo
  echo "| case | target | TPS | avg latency ms | p99 latency ms | pooler CPU µs/txn | pooler peak RSS MiB | Postgres CPU µs/txn | machine idle % | TPS vs PgBouncer |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for case in $(awk '{print $1}' "$RESULTS" | awk '!seen[$0]++'); do
    base=$(avg "$case" pgbouncer 3)
    for t in $(awk -v c="$case" '$1==c {print $2}' "$RESULTS" | awk '!seen[$0]++'); do
      tps=$(avg "$case" "$t" 3)
      echo "| $case | $t | $tps | $(avg "$case" "$t" 4) | $(avg "$case" "$t" 5) | $(avg "$case" "$t" 6) | $(avg "$case" "$t" 7) | $(avg "$case" "$t" 8) | $(avg "$case" "$t" 9) | $(ratio "$tps" "$base") |"
    done
  done
} > "$REPORT"
# A partial run (ONLY_S) does not replace the full report.
if [ -n "$ONLY_S" ]; then cp "$REPORT" benches/RESULTS-S.md; else cp "$REPORT" benches/RESULTS.md; fi
cat "$REPORT"
