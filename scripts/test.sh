#!/usr/bin/env bash
# Runs every check tether has: formatting, lints, all tests (unit, integration over real
# loopback sockets, property tests; the hub's store on SQLite and on a throwaway PostgreSQL
# cluster it starts and stops), and the browser test of the hub console (it installs
# Debian's Chromium and playwright-core when missing). This is the README's test command and
# what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Insta must compare against the committed snapshots, never write new ones, in CI.
export INSTA_UPDATE="${INSTA_UPDATE:-no}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "python protocol SDKs for the ACP/MCP tests (scripts/python-sdks.sh)"
./scripts/python-sdks.sh
export TETHER_PYTHON="${TETHER_PYTHON:-$PWD/target/python-sdk/bin/python}"

step "the monitoring stack for the alert end-to-end test (scripts/monitoring-stack.sh)"
# Debian's Prometheus and Alertmanager: crates/tether/tests/monitoring_e2e.rs drives them.
eval "$(./scripts/monitoring-stack.sh)"

step "a throwaway PostgreSQL for the store tests (scripts/postgres.sh)"
# Every store test runs against SQLite and against this cluster (a database per test); with
# CI=true a PostgreSQL variant without TETHER_TEST_PG_URL fails instead of skipping.
eval "$(./scripts/postgres.sh start)"
trap './scripts/postgres.sh stop "$TETHER_TEST_PG_DIR" || true' EXIT

step "cargo test"
cargo test --workspace --locked

step "browser end-to-end test of the hub console (scripts/e2e.sh)"
./scripts/e2e.sh

step "all checks passed"
