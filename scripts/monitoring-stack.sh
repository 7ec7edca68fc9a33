#!/usr/bin/env bash
# Installs the real monitoring stack the alert-intake end-to-end test drives: Debian's
# Prometheus and Alertmanager (packages `prometheus`, `prometheus-alertmanager`). Their
# services do not start by themselves; the test starts both on loopback with its own
# configuration and stops them. Prints the two binaries' paths as shell assignments:
#
#   eval "$(scripts/monitoring-stack.sh)"   # sets TETHER_PROMETHEUS and TETHER_ALERTMANAGER
set -euo pipefail

find_bin() { command -v "$1" 2>/dev/null || true; }

prom="$(find_bin prometheus)"
am="$(find_bin prometheus-alertmanager)"
if [ -z "$prom" ] || [ -z "$am" ]; then
  echo "==> installing prometheus and prometheus-alertmanager (apt)" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update >&2
  # Without an init system the packages' services are not started (invoke-rc.d says so).
  $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends prometheus prometheus-alertmanager >&2
  prom="$(find_bin prometheus)"
  am="$(find_bin prometheus-alertmanager)"
fi
[ -n "$prom" ] || { echo "monitoring-stack: no prometheus binary after install" >&2; exit 1; }
[ -n "$am" ] || { echo "monitoring-stack: no prometheus-alertmanager binary after install" >&2; exit 1; }
printf 'export TETHER_PROMETHEUS=%q\nexport TETHER_ALERTMANAGER=%q\n' "$prom" "$am"
