#!/usr/bin/env bash
# Runs every check tether has: formatting, lints, and all tests (unit, integration over real
# loopback sockets, property tests). This is the README's test command and what CI runs.
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

step "cargo test"
cargo test --workspace --locked

step "all checks passed"
