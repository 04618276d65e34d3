#!/usr/bin/env bash
# Read/write splitting cost and benefit, measured side by side in one run:
#   - pgbench -S through usher with read_write_split off (everything on the primary) vs on
#     (primary + one streaming replica), same primary;
#   - pgbench -N with read_your_writes on vs off (the cost of reading the commit LSN).
# Runs are interleaved so drift on a noisy machine hits both alike.
#   SECS=10 ROUNDS=2 CLIENTS=50 benches/split.sh
cd "$(dirname "$0")/.."
SECS=${SECS:-10}; ROUNDS=${ROUNDS:-2}; CLIENTS=${CLIENTS:-50}
source benches/lib.sh

PG=$(free_port); REP=$(free_port)
start_primary "$PG"
start_replica "$PG" "$REP"
conf() { # port split ryw
  usher_header "$1"
  cat <<TOML
[databases.app]
read_write_split = $2
read_your_writes = $3
shards = [ { primary = "127.0.0.1:$PG/app", replicas = ["127.0.0.1:$REP/app"] } ]
TOML
}
P_OFF=$(free_port); start_usher off "$(conf "$P_OFF" false true)"; PID_OFF=$LAST_PID
P_ON=$(free_port); start_usher on "$(conf "$P_ON" true true)"; PID_ON=$LAST_PID
P_NORYW=$(free_port); start_usher noryw "$(conf "$P_NORYW" true false)"; PID_NORYW=$LAST_PID
sleep 2

RESULTS="$WORK/results"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for v in off on; do
    port_var=P_${v^^}; pid_var=PID_${v^^}
    r=$(run_pgbench "${!port_var}" "${!pid_var}" -S -M simple -c "$CLIENTS" -j 2 -T "$SECS")
    echo "S $v $r" | tee -a "$RESULTS" >&2
  done
  for v in on noryw; do
    port_var=P_${v^^}; pid_var=PID_${v^^}
    r=$(run_pgbench "${!port_var}" "${!pid_var}" -N -M simple -c "$CLIENTS" -j 2 -T "$SECS")
    echo "N $v $r" | tee -a "$RESULTS" >&2
  done
done

avg() { awk -v w="$1" -v v="$2" -v f="$3" '$1==w && $2==v {s+=$f; n++} END {printf "%.1f", s/n}' "$RESULTS"; }
echo
echo "pgbench -M simple, $CLIENTS clients, ${SECS}s runs, $ROUNDS interleaved rounds, pool 25, $(nproc) cores"
echo
echo "| workload | usher config | TPS (mean) | avg latency ms | usher CPU µs/txn |"
echo "| --- | --- | --- | --- | --- |"
echo "| -S | split off (primary only) | $(avg S off 3) | $(avg S off 4) | $(avg S off 5) |"
echo "| -S | split on (primary + replica) | $(avg S on 3) | $(avg S on 4) | $(avg S on 5) |"
echo "| -N | split on, read_your_writes on | $(avg N on 3) | $(avg N on 4) | $(avg N on 5) |"
echo "| -N | split on, read_your_writes off | $(avg N noryw 3) | $(avg N noryw 4) | $(avg N noryw 5) |"
awk '$1=="S" {s[$2]+=$3} $1=="N" {n[$2]+=$3} END {printf "\nTPS ratio -S split on/off: %.2f; -N read_your_writes on/off: %.2f\n", s["on"]/s["off"], n["on"]/n["noryw"]}' "$RESULTS"
