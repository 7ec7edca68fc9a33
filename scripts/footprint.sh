#!/usr/bin/env bash
# Measures the footprint of a real `tether agent` linked to a real `tether hub`: median
# resident memory and CPU use over a run.
#
#   scripts/footprint.sh                      # 5 minutes, link only
#   scripts/footprint.sh 60                   # 1 minute
#   FOOTPRINT_CHECKS=20 scripts/footprint.sh  # plus 20 check instances at a 30 s interval
#   FOOTPRINT_INTERVAL=2 FOOTPRINT_PROTO=1 scripts/footprint.sh 300
#   FOOTPRINT_PROFILE=release scripts/footprint.sh   # the day-to-day build instead
#
# It builds `tether` with the `dist` profile (what to deploy: LTO; see Cargo.toml), starts a hub on a free loopback port with a shared
# enrollment token, starts an agent linked to it (plaintext ws:// on loopback, listener off, a
# throwaway state directory; with FOOTPRINT_CHECKS=N, N check instances of several plugins
# in its conf.d), waits for the registration, then samples the agent every
# FOOTPRINT_INTERVAL seconds (default 1):
#   RSS  from /proc/PID/status (VmRSS)
#   CPU  from /proc/PID/stat (utime + stime, in clock ticks) — per interval, and overall.
# It prints the median and maximum RSS, the median per-interval CPU %, and the average CPU %
# over the whole run (100 % = one core). Everything it started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-300}"
interval="${FOOTPRINT_INTERVAL:-1}"
proto="${FOOTPRINT_PROTO:-2}"
checks="${FOOTPRINT_CHECKS:-0}"
profile="${FOOTPRINT_PROFILE:-dist}"
[[ "$duration" =~ ^[0-9]+$ && "$duration" -ge 1 ]] || { echo "usage: scripts/footprint.sh [seconds]" >&2; exit 2; }

echo "==> building (profile $profile): tether"
cargo build --profile "$profile" -p tether --bin tether
tether="target/$profile/tether"
[[ "$profile" == dev ]] && tether="target/debug/tether"

work="$(mktemp -d)"
hub_pid=""
agent_pid=""
cleanup() {
    [[ -n "$agent_pid" ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
    [[ -n "$hub_pid" ]] && kill "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
enroll="footprint-enrollment-token"
cat >"$work/hub.toml" <<TOML
listen = "127.0.0.1:$port"
state_dir = "$work/hub"
enrollment_token = "$enroll"
TOML
TETHER_LOG=warn "$tether" hub --config "$work/hub.toml" >"$work/hub.log" 2>&1 &
hub_pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { echo "the hub did not start:" >&2; cat "$work/hub.log" >&2; exit 1; }

mkdir -p "$work/conf.d"
if (( checks > 0 )); then
    # A realistic mix, every instance at 30 s: system figures, the root file system, files,
    # a log, a port, a process, a script.
    touch "$work/watched.log" "$work/marker"
    plugins=(cpu mem load uptime disk disk filecheck filecheck tcp procnum logfile exec)
    declare -A count=()
    for ((i = 0; i < checks; i++)); do
        p="${plugins[$((i % ${#plugins[@]}))]}"
        count[$p]=$(( ${count[$p]:-0} + 1 ))
    done
    for p in "${!count[@]}"; do
        f="$work/conf.d/$p.toml"
        echo 'interval = "30s"' >"$f"
        for ((n = 0; n < count[$p]; n++)); do
            echo "[[instances]]" >>"$f"
            echo "name = \"$p-$n\"" >>"$f"
            case "$p" in
                disk) echo 'mounts = ["/"]' >>"$f" ;;
                filecheck) echo "path = \"$work/marker\"" >>"$f" ;;
                tcp) echo "target = \"127.0.0.1:$port\"" >>"$f" ;;
                procnum) echo 'process = "tether"' >>"$f" ;;
                logfile) echo "path = \"$work/watched.log\"" >>"$f"; echo 'pattern = "ERROR"' >>"$f" ;;
                exec) echo 'command = "/bin/true"' >>"$f" ;;
            esac
        done
    done
fi

cat >"$work/agent.toml" <<TOML
listen = "off"
state_dir = "$work/state"
checks_dir = "$work/conf.d"

[hub]
url = "ws://127.0.0.1:$port"
token = "$enroll"
allow_plaintext = true
proto_version = $proto
TOML

TETHER_LOG=info "$tether" agent --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 200); do
    grep -q 'hub link: registered' "$work/agent.log" && break
    kill -0 "$agent_pid" 2>/dev/null || { echo "the agent exited:" >&2; cat "$work/agent.log" >&2; exit 1; }
    sleep 0.1
done
grep -q 'hub link: registered' "$work/agent.log" || { echo "the agent did not register:" >&2; cat "$work/agent.log" >&2; exit 1; }
if grep -q 'checks config' "$work/agent.log"; then
    echo "check config errors:" >&2; grep 'checks config' "$work/agent.log" >&2; exit 1
fi
echo "==> agent $agent_pid registered with ws://127.0.0.1:$port (protocol v$proto, $checks check instances); sampling every ${interval}s for ${duration}s"

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
echo "tether agent ($profile build) footprint over ${elapsed%.*} s (${#rss_samples[@]} samples, linked to a hub, protocol v$proto, $checks check instances at 30 s)"
awk -v m="$rss_median" -v x="$rss_max" 'BEGIN{printf "  RSS  median %.1f MiB   max %.1f MiB\n", m/1024, x/1024}'
echo "  CPU  median ${cpu_median} % per ${interval}s interval   average ${cpu_avg} % (${total_ticks} ticks at ${ticks_per_sec} Hz)"
echo "  hub link registrations: $(grep -c 'hub link: registered' "$work/agent.log")"
