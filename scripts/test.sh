#!/usr/bin/env bash
# The full test suite: formatting, lints, unit tests and integration tests against real
# PostgreSQL servers that the tests start themselves (see tests/common/mod.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Benches are compiled (and linted) by clippy above; they are run by `cargo bench`, not here.
cargo test --locked --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}"
