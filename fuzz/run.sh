#!/usr/bin/env bash
# Runs one fuzz target for SECONDS (default 60) from a seeded corpus and prints libFuzzer's
# final stats. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Long runs are made by hand (their figures go in the issue's closing note), not in CI;
# the same entry points run as a short property test in `cargo test` (protocol::robustness).
#   fuzz/run.sh client_messages 1800
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?target: client_messages, startup or session}
secs=${2:-60}
corpus=corpus/$target
mkdir -p "$corpus" artifacts/"$target"
if [ -z "$(ls -A "$corpus")" ]; then
  python3 seeds.py "$target" "$corpus"
fi
cargo +nightly fuzz run -O "$target" "$corpus" -- \
  -max_total_time="$secs" -print_final_stats=1 -artifact_prefix=artifacts/"$target"/ \
  -timeout=10 -rss_limit_mb=4096
