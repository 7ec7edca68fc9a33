#!/usr/bin/env bash
# End-to-end browser test of the hub's web console.
#
# Installs what is missing (Debian's Chromium; playwright-core from tests/e2e/package-lock.json),
# builds tether, runs `tether up` (a hub and a local agent on loopback) in a throwaway XDG home,
# then drives Chromium with Playwright through tests/e2e/console.e2e.test.mjs against the real
# hub and agent. `tether up` is always stopped afterwards. Screenshots: tests/e2e/output/*.png; on failure
# tether up's output is kept in tests/e2e/output/tether-up.log.
#
# `tether up` runs twice: its first run writes hub.toml and prints the operator token; the
# script then adds an `[[alert_sources]]` entry and an observer operator to that hub.toml (the
# test posts Alertmanager notifications and signs in as an observer) and starts it again.
#
# Environment: CHROMIUM=/path overrides /usr/bin/chromium;
# TETHER_UP_ARGS replaces the arguments of `tether up` (default: --port <a free port>).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
E2E="$ROOT/tests/e2e"
OUT="$E2E/output"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'e2e: %s\n' "$*" >&2; exit 1; }

# ---- prerequisites ---------------------------------------------------------------------------
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CHROMIUM
if [ ! -x "$CHROMIUM" ]; then
  step "installing chromium (apt)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
fi
[ -x "$CHROMIUM" ] || die "no Chromium at $CHROMIUM"
command -v node >/dev/null || die "node is needed (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm is needed"

step "npm ci (tests/e2e)"
(cd "$E2E" && npm ci --no-audit --no-fund --loglevel=error)

step "cargo build -p tether"
cargo build -p tether --manifest-path "$ROOT/Cargo.toml"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TETHER_BIN="$TARGET_DIR/debug/tether"
[ -x "$TETHER_BIN" ] || die "no binary at $TETHER_BIN"
export TETHER_BIN

mkdir -p "$OUT"
rm -f "$OUT"/*.png "$OUT"/tether-up.log

status=0

# ---- the console against tether up --------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tether-e2e.XXXXXX")"
UP_LOG="$WORK/up.log"
UP_PID=""

stop_up() {
  if [ -n "$UP_PID" ] && kill -0 "$UP_PID" 2>/dev/null; then
    # tether up runs in its own process group (setsid): stop the whole group, politely first.
    kill -TERM -- "-$UP_PID" 2>/dev/null || kill -TERM "$UP_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$UP_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$UP_PID" 2>/dev/null; then
      echo "e2e: tether up did not stop within 10 s of SIGTERM; killing it" >&2
      kill -KILL -- "-$UP_PID" 2>/dev/null || kill -KILL "$UP_PID" 2>/dev/null || true
    fi
  fi
  if [ -n "$UP_PID" ]; then wait "$UP_PID" 2>/dev/null || true; fi
  UP_PID=""
}

cleanup() {
  local rc=$?
  stop_up
  if [ "$rc" -ne 0 ] || [ "$status" -ne 0 ]; then
    [ -f "$UP_LOG" ] && cp "$UP_LOG" "$OUT/tether-up.log" && echo "e2e: tether up's output: $OUT/tether-up.log" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close();});'
}

random_token() {
  node -e 'console.log(require("crypto").randomBytes(24).toString("hex"))'
}

# Runs `tether up $1` in the background and waits for its `console:` line (and, with $2 =
# first, its `operator token:` line: a first run prints the tokens). Returns 0 when ready, 2
# when it exited because an address was in use (worth another try), 1 otherwise.
launch_up() {
  local args="$1" first="${2:-}"
  # shellcheck disable=SC2086
  setsid "$TETHER_BIN" up $args >"$UP_LOG" 2>&1 &
  UP_PID=$!
  CONSOLE_URL=""
  OPERATOR_TOKEN=""
  for _ in $(seq 1 600); do # 60 s
    if ! kill -0 "$UP_PID" 2>/dev/null; then
      wait "$UP_PID" 2>/dev/null || true
      UP_PID=""
      cat "$UP_LOG" >&2
      if grep -q "Address already in use" "$UP_LOG"; then return 2; fi
      echo "e2e: tether up exited before it was ready" >&2
      return 1
    fi
    CONSOLE_URL="$(sed -n 's/^[[:space:]]*console:[[:space:]]*\(http[^[:space:]]*\).*$/\1/p' "$UP_LOG" | head -n 1)"
    OPERATOR_TOKEN="$(sed -n 's/^[[:space:]]*operator token:[[:space:]]*\([^[:space:]]*\).*$/\1/p' "$UP_LOG" | head -n 1)"
    if [ -n "$CONSOLE_URL" ] && { [ -z "$first" ] || [ -n "$OPERATOR_TOKEN" ]; }; then break; fi
    sleep 0.1
  done
  if [ -z "$CONSOLE_URL" ]; then
    cat "$UP_LOG" >&2
    echo "e2e: tether up printed no 'console: URL' line within 60 s" >&2
    return 1
  fi
  if [ -n "$first" ] && { [ -z "$OPERATOR_TOKEN" ] || [ "$OPERATOR_TOKEN" = "see" ]; }; then
    cat "$UP_LOG" >&2
    echo "e2e: tether up's first run printed no 'operator token: TOKEN' line within 60 s" >&2
    return 1
  fi
  return 0
}

# Starts `tether up` in a fresh XDG home (so it is a first run, writes hub.toml and prints the
# operator token), stops it, adds to its hub.toml what `tether up` does not write — an alert
# source (the test posts Alertmanager notifications with its token) and an observer operator —
# and starts it again on the same files. Returns as launch_up.
start_up() {
  local home="$WORK/home$1" args="${TETHER_UP_ARGS-}" rc=0 first_token
  export XDG_DATA_HOME="$home/data" XDG_CONFIG_HOME="$home/config" XDG_STATE_HOME="$home/state" XDG_CACHE_HOME="$home/cache"
  mkdir -p "$XDG_DATA_HOME" "$XDG_CONFIG_HOME" "$XDG_STATE_HOME" "$XDG_CACHE_HOME"
  # A free port for the hub, so a hub already on the default port does not get in the way.
  if [ -z "${TETHER_UP_ARGS+set}" ]; then args="--port $(free_port)"; fi
  step "tether up $args (first run, XDG home: $home)"
  launch_up "$args" first || return $?
  first_token="$OPERATOR_TOKEN"
  stop_up
  TETHER_ALERT_SOURCE_TOKEN="$(random_token)"
  TETHER_OBSERVER_TOKEN="$(random_token)"
  export TETHER_ALERT_SOURCE_TOKEN TETHER_OBSERVER_TOKEN
  cat >>"$XDG_CONFIG_HOME/tether/hub.toml" <<TOML

# Added by scripts/e2e.sh: the test posts Alertmanager notifications and signs in as an observer.
[[alert_sources]]
name = "e2e-alertmanager"
token = "$TETHER_ALERT_SOURCE_TOKEN"

[[operators]]
name = "e2e-observer"
class = "observer"
token = "$TETHER_OBSERVER_TOKEN"
TOML
  step "tether up $args (again, with an alert source and an observer in hub.toml)"
  launch_up "$args" || rc=$?
  OPERATOR_TOKEN="$first_token"
  return "$rc"
}

# tether up's local agent listens on a fixed address (127.0.0.1:7700 by default); when another
# tether holds it, wait for it to go away and try again, a few times.
attempt=1
while :; do
  rc=0
  start_up "$attempt" || rc=$?
  [ "$rc" -eq 0 ] && break
  if [ "$rc" -eq 2 ] && [ "$attempt" -lt 6 ]; then
    echo "e2e: an address tether up needs is in use; trying again in 10 s (attempt $attempt of 6)" >&2
    attempt=$((attempt + 1))
    sleep 10
    continue
  fi
  die "tether up did not start"
done
echo "console: $CONSOLE_URL"

# The console must answer before the browser goes there.
node -e '
  const url = new URL("healthz", process.argv[1]).href;
  const deadline = Date.now() + 30000;
  (async () => {
    for (;;) {
      try { const r = await fetch(url); if (r.ok) return; } catch {}
      if (Date.now() > deadline) { console.error("e2e: " + url + " did not answer within 30 s"); process.exit(1); }
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
' "$CONSOLE_URL"

step "console against tether up"
export TETHER_CONSOLE_URL="$CONSOLE_URL" TETHER_OPERATOR_TOKEN="$OPERATOR_TOKEN" TETHER_ALERT_SOURCE_TOKEN TETHER_OBSERVER_TOKEN
(cd "$E2E" && timeout 600 node --test --test-reporter=spec --test-concurrency=1 console.e2e.test.mjs) || status=1

stop_up

if [ "$status" -eq 0 ]; then
  step "e2e passed; screenshots in $OUT"
else
  step "e2e FAILED; screenshots in $OUT"
fi
ls -1 "$OUT"/*.png 2>/dev/null || true
exit "$status"
