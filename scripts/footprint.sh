#!/usr/bin/env bash
# Measures the footprint of a real `tether agent` linked to a hub: median resident memory and
# CPU use over a run.
#
#   scripts/footprint.sh            # 5 minutes
#   scripts/footprint.sh 60         # 1 minute
#   FOOTPRINT_INTERVAL=2 FOOTPRINT_PROTO=1 scripts/footprint.sh 300
#
# It builds (release) the `tether` binary and the stand-in hub
# `crates/tether-link/examples/test_hub.rs` (the acceptance tests' test hub: acks register,
# acks alerts, pings every 30 s), starts the hub on a free loopback port, starts
# `target/release/tether agent` with a [hub] section pointing at it (plaintext ws:// on
# loopback, listener off, a throwaway state directory), waits for the registration, then
# samples the agent every FOOTPRINT_INTERVAL seconds (default 1):
#   RSS  from /proc/PID/status (VmRSS)
#   CPU  from /proc/PID/stat (utime + stime, in clock ticks) — per interval, and overall.
# It prints the median and maximum RSS, the median per-interval CPU %, and the average CPU %
# over the whole run (100 % = one core). Everything it started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-300}"
interval="${FOOTPRINT_INTERVAL:-1}"
proto="${FOOTPRINT_PROTO:-2}"
[[ "$duration" =~ ^[0-9]+$ && "$duration" -ge 1 ]] || { echo "usage: scripts/footprint.sh [seconds]" >&2; exit 2; }

echo "==> building (release): tether, test_hub"
cargo build --release -p tether --bin tether
cargo build --release -p tether-link --example test_hub

work="$(mktemp -d)"
hub_pid=""
agent_pid=""
cleanup() {
    [[ -n "$agent_pid" ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
    [[ -n "$hub_pid" ]] && kill "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

target/release/examples/test_hub --listen 127.0.0.1:0 --version "$proto" --ping-every 30 \
    >"$work/hub.out" 2>&1 &
hub_pid=$!
url=""
for _ in $(seq 100); do
    url="$(grep -m1 -o 'ws://[0-9.:]*' "$work/hub.out" || true)"
    [[ -n "$url" ]] && break
    sleep 0.1
done
[[ -n "$url" ]] || { echo "the test hub did not start:" >&2; cat "$work/hub.out" >&2; exit 1; }

cat >"$work/agent.toml" <<TOML
listen = "off"
state_dir = "$work/state"

[hub]
url = "$url"
token = "footprint-token"
allow_plaintext = true
proto_version = $proto
TOML

target/release/tether agent --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 200); do
    grep -q '^registered' "$work/hub.out" && break
    kill -0 "$agent_pid" 2>/dev/null || { echo "the agent exited:" >&2; cat "$work/agent.log" >&2; exit 1; }
    sleep 0.1
done
grep -q '^registered' "$work/hub.out" || { echo "the agent did not register:" >&2; cat "$work/agent.log" >&2; exit 1; }
echo "==> agent $agent_pid registered with $url (protocol v$proto); sampling every ${interval}s for ${duration}s"

ticks_per_sec="$(getconf CLK_TCK)"
cpu_ticks() { sed 's/.*) //' "/proc/$agent_pid/stat" | awk '{print $12 + $13}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$agent_pid/status"; }
now() { date +%s.%N; }

rss_samples=()
cpu_samples=()
start_ticks="$(cpu_ticks)"
start_time="$(now)"
prev_ticks="$start_ticks"
prev_time="$start_time"
end=$(( $(date +%s) + duration ))
while (( $(date +%s) < end )); do
    sleep "$interval"
    kill -0 "$agent_pid" 2>/dev/null || { echo "the agent exited during the run:" >&2; cat "$work/agent.log" >&2; exit 1; }
    t="$(now)"
    ticks="$(cpu_ticks)"
    rss_samples+=("$(rss_kib)")
    cpu_samples+=("$(awk -v d="$((ticks - prev_ticks))" -v hz="$ticks_per_sec" -v dt="$(awk -v a="$t" -v b="$prev_time" 'BEGIN{print a-b}')" \
        'BEGIN{printf "%.3f", (d / hz) / dt * 100}')")
    prev_ticks="$ticks"
    prev_time="$t"
done
total_ticks=$(( prev_ticks - start_ticks ))
elapsed="$(awk -v a="$prev_time" -v b="$start_time" 'BEGIN{print a-b}')"

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
max() { printf '%s\n' "$@" | sort -n | tail -1; }

rss_median="$(median "${rss_samples[@]}")"
rss_max="$(max "${rss_samples[@]}")"
cpu_median="$(median "${cpu_samples[@]}")"
cpu_avg="$(awk -v d="$total_ticks" -v hz="$ticks_per_sec" -v dt="$elapsed" 'BEGIN{printf "%.3f", (d / hz) / dt * 100}')"

echo
echo "tether agent footprint over ${elapsed%.*} s (${#rss_samples[@]} samples, linked to a hub, protocol v$proto)"
awk -v m="$rss_median" -v x="$rss_max" 'BEGIN{printf "  RSS  median %.1f MiB   max %.1f MiB\n", m/1024, x/1024}'
echo "  CPU  median ${cpu_median} % per ${interval}s interval   average ${cpu_avg} % (${total_ticks} ticks at ${ticks_per_sec} Hz)"
echo "  hub: $(grep -c '^registered' "$work/hub.out") registration(s)"
