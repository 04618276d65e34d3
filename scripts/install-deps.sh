#!/usr/bin/env bash
# Installs what usher's build, tests and benchmarks need on a fresh Debian machine:
# PostgreSQL server + contrib (pg_stat_statements), pgbouncer (benchmarks), libclang (pg_query).
# Skips apt entirely when everything is already there.
set -euo pipefail

packages=(postgresql postgresql-contrib pgbouncer libclang-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts a cluster on 5432 that nothing of ours uses; leave it alone.
